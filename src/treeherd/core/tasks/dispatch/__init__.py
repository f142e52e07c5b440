"""The dispatcher's decisions, pure, one module per responsibility (the shell is `manager.dispatcher`):

- `heartbeats`: the period an agent is told, its grace, and the deadlines the dispatcher watches;
- `registration`: the rate limit on registrations and the machine record a registration leads to;
- `node_states`: the agent state recorded on machines (ready, unknown, down);
- `status`: the verdict on each task status an agent reports;
- `status_batch`: accepted statuses waiting for one write, and the writes a batch becomes;
- `assignments`: the tasks an agent is told about, in full and in increments;
- `settings`: the cluster settings these read.

Time comes in as arguments: `now` in monotonic seconds (deadlines, rate limits) or as a datetime
(timestamps written to the store); randomness comes in as a `draw` in [0, 1]. Callers import from the
package; the names below are its interface.
"""

from treeherd.core.tasks.dispatch.assignments import AssignmentSet, agent_should_know
from treeherd.core.tasks.dispatch.heartbeats import (
    UNKNOWN_GRACE_FACTOR,
    Deadlines,
    heartbeat_answer_due,
    heartbeat_period,
    heartbeat_timeout,
    told_settings,
)
from treeherd.core.tasks.dispatch.node_states import plan_agent_state, plan_mark_unknown
from treeherd.core.tasks.dispatch.registration import RegistrationLimiter, plan_register
from treeherd.core.tasks.dispatch.settings import cluster_settings
from treeherd.core.tasks.dispatch.status import Verdict, check_status, moves_forward
from treeherd.core.tasks.dispatch.status_batch import (
    PendingStatus,
    ReportOutcome,
    StatusBatcher,
    plan_status_flush,
)

__all__ = [
    "UNKNOWN_GRACE_FACTOR",
    "AssignmentSet",
    "Deadlines",
    "PendingStatus",
    "RegistrationLimiter",
    "ReportOutcome",
    "StatusBatcher",
    "Verdict",
    "agent_should_know",
    "check_status",
    "cluster_settings",
    "heartbeat_answer_due",
    "heartbeat_period",
    "heartbeat_timeout",
    "moves_forward",
    "plan_agent_state",
    "plan_mark_unknown",
    "plan_register",
    "plan_status_flush",
    "told_settings",
]
