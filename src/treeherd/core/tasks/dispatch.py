"""The dispatcher's decisions, pure: heartbeat deadlines, registration rate limits, task status
validation and batching, an agent's machine record, and the set of tasks an agent is told about.

Time comes in as arguments: `now` in monotonic seconds (deadlines, rate limits) or as a datetime
(timestamps written to the store); randomness comes in as a `draw` in [0, 1].

Invariants:
- a node's deadline is `now + (period + draw * epsilon) * multiplier` after its last registration or
  heartbeat, twice that while it is "unknown" (the dispatcher restarted and the agent has not come back);
- a hostname registers at most `registration_limit` times per `registration_window_s` (refusals do not
  count, so an agent that waits `retry_after_s` gets in);
- an agent moves its tasks only from ACCEPTED on, only forward, and only tasks on its own machine; a
  status equal to or behind the stored one is dropped, a task that ended stays ended;
- an agent is told about a task on its machine from ASSIGNED on until the task has ended and the
  manager wants it shut down; a change the agent itself reported (status only) is not echoed back.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Generic, NamedTuple, TypeVar

import msgspec

from treeherd.core.tree import validate
from treeherd.core.view import View
from treeherd.model.events import Event
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Op, Update
from treeherd.model.services import ClusterSettings, Task, TaskStatus
from treeherd.model.states import LAST_MANAGER_STATE, NodeState, TaskState
from treeherd.model.wire import Assignments, Register, TaskStatusUpdate

__all__ = [
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
    "heartbeat_period",
    "heartbeat_timeout",
    "plan_agent_state",
    "plan_mark_unknown",
    "plan_register",
    "plan_status_flush",
]

W = TypeVar("W")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UNKNOWN_GRACE_FACTOR = 2.0


def cluster_settings(view: View) -> ClusterSettings:
    """The stored cluster settings, or the defaults when none are stored."""
    stored = view.lookup(ClusterSettings, "name", "default")
    return stored or ClusterSettings(id="default", created_at=_EPOCH, updated_at=_EPOCH)


# ---- heartbeats -----------------------------------------------------------------------------------
def heartbeat_period(settings: ClusterSettings, draw: float) -> float:
    """The period an agent is told to heartbeat at: the base period plus `draw` (in [0, 1]) of the
    epsilon, so that agents restarted together spread out."""
    return settings.heartbeat_period_s + min(max(draw, 0.0), 1.0) * settings.heartbeat_epsilon_s


def heartbeat_timeout(period: float, settings: ClusterSettings, *, unknown: bool = False) -> float:
    """How long a node may stay silent after being told `period`: the grace multiplier of periods,
    doubled for a node in the "unknown" state."""
    timeout = period * settings.heartbeat_grace_multiplier
    return timeout * UNKNOWN_GRACE_FACTOR if unknown else timeout


class Deadlines:
    """When each tracked node must have been heard from; `expired(now)` hands back the late ones.

    A heap ordered by deadline with lazy deletion: a heartbeat pushes a new entry and leaves the old
    one to be skipped, and the heap is rebuilt when skipped entries outnumber live ones.
    """

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._due

    def due(self, node_id: str) -> float | None:
        return self._due.get(node_id)

    def register(self, node_id: str, now: float, timeout: float) -> float:
        """Track `node_id` (again) with a deadline `timeout` seconds from `now`; returns the deadline."""
        due = now + timeout
        self._due[node_id] = due
        heapq.heappush(self._heap, (due, node_id))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(d, n) for n, d in self._due.items()]
            heapq.heapify(self._heap)
        return due

    def heartbeat(self, node_id: str, now: float, timeout: float) -> bool:
        """Move a tracked node's deadline; False (and nothing tracked) for a node not tracked."""
        if node_id not in self._due:
            return False
        self.register(node_id, now, timeout)
        return True

    def forget(self, node_id: str) -> bool:
        return self._due.pop(node_id, None) is not None

    def postpone(self, seconds: float) -> None:
        """Move every deadline `seconds` later: for time in which nobody listened to the nodes."""
        self._due = {node_id: due + seconds for node_id, due in self._due.items()}
        self._heap = [(due, node_id) for node_id, due in self._due.items()]
        heapq.heapify(self._heap)

    def next_due(self) -> float | None:
        while self._heap:
            due, node_id = self._heap[0]
            if self._due.get(node_id) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline is at or before `now`, earliest first; they are no longer tracked."""
        late: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            due, node_id = heapq.heappop(self._heap)
            if self._due.get(node_id) == due:
                del self._due[node_id]
                late.append(node_id)
        return late


# ---- registration -----------------------------------------------------------------------------------
class RegistrationLimiter:
    """At most `limit` registrations per key within a sliding window of `window_s` seconds."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float, *, limit: int, window_s: float) -> float | None:
        """Record a registration and return None, or return how many seconds to wait before the next
        one is admitted (refusals are not recorded). `limit <= 0` admits everything."""
        if limit <= 0:
            return None
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - window_s:
            times.popleft()
        if len(times) >= limit:
            return max(times[0] + window_s - now, 0.0)
        times.append(now)
        return None

    def prune(self, now: float, window_s: float) -> None:
        """Forget keys whose registrations all left the window."""
        for key in [k for k, times in self._seen.items() if not times or times[-1] <= now - window_s]:
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


def plan_register(
    view: View, register: Register, *, address: str, now: datetime, new_id: Callable[[], str]
) -> tuple[list[Op], str]:
    """The machine record an agent's registration leads to, and the machine's id.

    A new hostname creates the machine with everything the agent reports (its labels included). A
    known one takes the agent's ips, cpus and memory (an empty or zero report keeps the stored value)
    and keeps what operators own: labels, machine kind (bindings never mix kinds), role, availability.
    Raises InvalidInput for a malformed report.
    """
    hostname = validate.hostname(register.hostname)
    ips = validate.ip_list(register.ips)
    validate.non_negative(register.cpus, field="cpus")
    validate.non_negative(register.memory_bytes, field="memory_bytes")
    machine = view.lookup(Machine, "hostname", hostname)
    if machine is None:
        validate.labels(register.labels)
        agent = AgentStatus(
            state="ready", address=address, version=register.version, since=now, limits=register.limits
        )
        created = Machine(
            id=new_id(),
            created_at=now,
            updated_at=now,
            hostname=hostname,
            ips=ips,
            machine_kind=register.machine_kind,
            labels=dict(sorted(register.labels.items())),
            cpus=register.cpus,
            memory_bytes=register.memory_bytes,
            agent=agent,
        )
        return [Create(created)], created.id
    previous = machine.agent
    since = previous.since if previous is not None and previous.state == "ready" else None
    agent = AgentStatus(
        state="ready",
        address=address,
        version=register.version,
        since=since or now,
        limits=register.limits,
    )
    updated = msgspec.structs.replace(
        machine,
        ips=ips or machine.ips,
        cpus=register.cpus or machine.cpus,
        memory_bytes=register.memory_bytes or machine.memory_bytes,
        agent=agent,
        updated_at=now,
    )
    return [Update(updated)], machine.id


def plan_agent_state(
    view: View, machine_ids: Iterable[str], state: NodeState, message: str, now: datetime
) -> list[Op]:
    """Set the agent state of these machines (those gone, without an agent, or already there are
    skipped); `since` moves only when the state changes."""
    ops: list[Op] = []
    for machine_id in machine_ids:
        machine = view.get(Machine, machine_id)
        if machine is None or machine.agent is None:
            continue
        agent = machine.agent
        if agent.state == state and agent.message == message:
            continue
        since = agent.since if agent.state == state else now
        new_agent = msgspec.structs.replace(agent, state=state, message=message, since=since)
        ops.append(Update(msgspec.structs.replace(machine, agent=new_agent, updated_at=now)))
    return ops


def plan_mark_unknown(view: View, now: datetime) -> tuple[list[Op], list[str]]:
    """At dispatcher start: every machine with an agent that is not down becomes "unknown" until its
    agent registers again. Returns the writes and the ids to track with a doubled grace. Down nodes
    are not resurrected."""
    ids = sorted(m.id for m in view.all(Machine) if m.agent is not None and m.agent.state != "down")
    message = "the dispatcher started: waiting for the agent to connect"
    return plan_agent_state(view, ids, "unknown", message, now), ids


# ---- task status ----------------------------------------------------------------------------------
class Verdict(enum.Enum):
    """What becomes of one status update an agent reports."""

    ACCEPT = "accept"  # newer than anything stored or queued: queue it
    QUEUED = "queued"  # the same state is queued already (a retried report): wait for that write
    DUPLICATE = "duplicate"  # the stored state already: dropped
    BACKWARD = "backward"  # behind the stored state: dropped
    STALE = "stale"  # behind a state already queued: dropped
    ENDED = "ended"  # the task already ended: dropped
    UNKNOWN_TASK = "unknown_task"  # no such task (it may have been deleted): rejected
    NOT_ON_NODE = "not_on_node"  # the task is not on the reporting machine: rejected
    MANAGER_STATE = "manager_state"  # a state only the manager sets: rejected

    @property
    def rejected(self) -> bool:
        """The agent broke the protocol (or lost a race with a deletion), as opposed to a normal drop."""
        return self in (Verdict.UNKNOWN_TASK, Verdict.NOT_ON_NODE, Verdict.MANAGER_STATE)


def check_status(
    task: Task | None, node_id: str, status: TaskStatus, *, queued: TaskStatus | None = None
) -> Verdict:
    """Judge one reported status against the stored task and the status already queued for it."""
    if task is None:
        return Verdict.UNKNOWN_TASK
    if task.machine_id != node_id:
        return Verdict.NOT_ON_NODE
    if status.state <= LAST_MANAGER_STATE:
        return Verdict.MANAGER_STATE
    ahead = moves_forward(status, task.status)
    if ahead is None:
        return Verdict.DUPLICATE
    if not ahead:
        return Verdict.BACKWARD
    if task.status.state.terminal:
        return Verdict.ENDED
    if queued is not None:
        ahead_of_queued = moves_forward(status, queued)
        if ahead_of_queued is None:
            return Verdict.QUEUED
        if not ahead_of_queued:
            return Verdict.STALE
    return Verdict.ACCEPT


def moves_forward(status: TaskStatus, than: TaskStatus) -> bool | None:
    """Whether `status` is news after `than`: a later state, or in the same state a different health
    reported later. None: the same news (a retried report)."""
    if status.state != than.state:
        return status.state > than.state
    if status.health == than.health:
        return None
    return status.timestamp > than.timestamp


class PendingStatus(NamedTuple):
    """A status waiting to be written, with the machine that reported it."""

    node_id: str
    status: TaskStatus


class ReportOutcome(NamedTuple):
    """Each update's verdict, and whether the report must wait for a write before it is acknowledged."""

    verdicts: list[tuple[str, Verdict]]
    waiting: bool


class StatusBatcher(Generic[W]):
    """Accepted statuses waiting to be written in one transaction, and who waits for that write.

    At most one batch is in flight (taken, being committed) while the next one fills. A report waits
    for the batch holding a state it reported; a report with nothing to write is answered at once.
    A failed write puts its batch back (behind any newer state queued meanwhile) with its waiters.
    """

    def __init__(self) -> None:
        self._pending: dict[str, PendingStatus] = {}
        self._waiters: list[W] = []
        self._inflight: dict[str, PendingStatus] = {}
        self._inflight_waiters: list[W] = []

    def __len__(self) -> int:
        """How many task statuses are queued (not counting the batch in flight)."""
        return len(self._pending)

    def queued(self, task_id: str) -> TaskStatus | None:
        """The furthest status not yet written for this task."""
        found = self._pending.get(task_id) or self._inflight.get(task_id)
        return found.status if found is not None else None

    def offer(
        self, view: View, node_id: str, updates: Sequence[TaskStatusUpdate], waiter: W
    ) -> ReportOutcome:
        """Judge a report from `node_id` and queue what it moves forward."""
        verdicts: list[tuple[str, Verdict]] = []
        on_pending = on_inflight = False
        for update in updates:
            queued = self.queued(update.task_id)
            verdict = check_status(view.get(Task, update.task_id), node_id, update.status, queued=queued)
            verdicts.append((update.task_id, verdict))
            if verdict is Verdict.ACCEPT:
                self._pending[update.task_id] = PendingStatus(node_id, update.status)
                on_pending = True
            elif verdict is Verdict.QUEUED:
                if update.task_id in self._pending:
                    on_pending = True
                else:
                    on_inflight = True
        if on_pending:
            self._waiters.append(waiter)
        elif on_inflight:
            self._inflight_waiters.append(waiter)
        return ReportOutcome(verdicts, on_pending or on_inflight)

    def take(self) -> dict[str, PendingStatus]:
        """Start writing everything queued; `settle` must follow before the next `take`."""
        if self._inflight:
            raise RuntimeError("a status batch is already in flight")
        self._inflight, self._pending = self._pending, {}
        self._inflight_waiters, self._waiters = self._waiters, []
        return dict(self._inflight)

    def settle(self, written: bool) -> list[W]:
        """End the write of the batch in flight; returns the waiters to answer (none if it failed)."""
        batch, waiters = self._inflight, self._inflight_waiters
        self._inflight, self._inflight_waiters = {}, []
        if written:
            return waiters
        for task_id, pending in batch.items():
            newer = self._pending.get(task_id)
            if newer is None or moves_forward(pending.status, newer.status):
                self._pending[task_id] = pending
        self._waiters = waiters + self._waiters
        return []


def plan_status_flush(
    view: View, batch: Mapping[str, PendingStatus], now: datetime
) -> tuple[list[Op], dict[str, Verdict]]:
    """The writes for a batch against the current state (a task may have moved meanwhile): one
    Update per task whose status still moves forward, and the verdicts of those dropped."""
    ops: list[Op] = []
    dropped: dict[str, Verdict] = {}
    for task_id, pending in batch.items():
        task = view.get(Task, task_id)
        verdict = check_status(task, pending.node_id, pending.status)
        if verdict is Verdict.ACCEPT:
            assert task is not None
            ops.append(Update(msgspec.structs.replace(task, status=pending.status, updated_at=now)))
        else:
            dropped[task_id] = verdict
    return ops, dropped


# ---- assignments ----------------------------------------------------------------------------------
def agent_should_know(task: Task, node_id: str) -> bool:
    """Whether the agent on `node_id` must know `task`: it is on that machine, the scheduler assigned
    it, and it has not both ended and been asked to shut down (then the agent may forget it)."""
    if task.machine_id != node_id or task.status.state < TaskState.ASSIGNED:
        return False
    return not (task.status.state.terminal and task.desired_state >= TaskState.SHUTDOWN)


def _same_for_agent(old: Task, new: Task) -> bool:
    """Equal but for what the agent itself reports (status) and the store's bookkeeping."""
    return (
        msgspec.structs.replace(old, status=new.status, version=new.version, updated_at=new.updated_at) == new
    )


class AssignmentSet:
    """The tasks one agent knows, and the changes not yet sent to it.

    `full()` starts (or restarts) the stream with every task; `apply()` folds in store events;
    `increment()` returns the next message, if anything changed. Sequence numbers grow by one per
    message. A removal may name a task the agent was never sent (added and removed within one batch);
    agents ignore removals of tasks they do not know.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sequence = 0
        self._known: dict[str, Task] = {}
        self._updated: dict[str, Task] = {}
        self._removed: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._known)

    @property
    def changed(self) -> int:
        """How many task changes wait for the next increment."""
        return len(self._updated) + len(self._removed)

    def full(self, tasks: Iterable[Task]) -> Assignments:
        self._known = {
            t.id: t for t in sorted(tasks, key=lambda t: t.id) if agent_should_know(t, self.node_id)
        }
        self._updated.clear()
        self._removed.clear()
        self.sequence += 1
        return Assignments(full=True, sequence=self.sequence, updated=list(self._known.values()))

    def apply(self, event: Event) -> bool:
        """Fold one store event in; True if the agent must hear about it."""
        task = event.object
        if not isinstance(task, Task):
            return False
        if event.type == "deleted" or not agent_should_know(task, self.node_id):
            return self._remove(task.id)
        old = self._known.get(task.id)
        self._known[task.id] = task
        # States up to ASSIGNED are the manager's: the agent must hear about them even when nothing
        # else changed. Past that, a status-only change came from the agent itself.
        if old is not None and task.status.state > LAST_MANAGER_STATE and _same_for_agent(old, task):
            if task.id in self._updated:
                self._updated[task.id] = task
            return False
        self._updated[task.id] = task
        self._removed.pop(task.id, None)
        return True

    def _remove(self, task_id: str) -> bool:
        if self._known.pop(task_id, None) is None:
            return False
        self._updated.pop(task_id, None)
        self._removed[task_id] = None
        return True

    def increment(self) -> Assignments | None:
        if not self._updated and not self._removed:
            return None
        self.sequence += 1
        message = Assignments(
            full=False,
            sequence=self.sequence,
            updated=list(self._updated.values()),
            removed=list(self._removed),
        )
        self._updated.clear()
        self._removed.clear()
        return message
