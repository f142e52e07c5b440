"""The agent state recorded on each machine (ready, unknown, down) as the dispatcher sees agents come
and go: the writes that move it, and the "unknown" state every live agent gets when the dispatcher
starts. Whether a machine counts as down is `core.tasks.machine_problems.agent_down`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from treeherd.core.tasks.machine_problems import agent_down
from treeherd.core.view import View
from treeherd.model.objects import Machine
from treeherd.model.ops import Op, Update
from treeherd.model.states import NodeState


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
    ids = sorted(m.id for m in view.all(Machine) if m.agent is not None and not agent_down(m))
    message = "the dispatcher started: waiting for the agent to connect"
    return plan_agent_state(view, ids, "unknown", message, now), ids
