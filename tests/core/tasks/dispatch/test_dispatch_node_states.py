"""The agent state recorded on machines: the "unknown" state at dispatcher start, and state writes."""

from __future__ import annotations

from datetime import timedelta

from treeherd.core.tasks.dispatch.node_states import plan_agent_state, plan_mark_unknown
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, machine


async def test_mark_unknown_skips_down_nodes_and_machines_without_agents(store: MemoryStore) -> None:
    ready = AgentStatus(state="ready", since=FIXED_NOW)
    await store.commit(
        [
            Create(machine("a", id="a", agent=ready)),
            Create(machine("b", id="b", agent=AgentStatus(state="down"))),
            Create(machine("c", id="c")),
            Create(machine("d", id="d", agent=AgentStatus(state="unknown"))),
        ]
    )
    later = FIXED_NOW + timedelta(hours=1)
    ops, ids = plan_mark_unknown(store.view(), later)
    assert ids == ["a", "d"]
    assert [op.object.id for op in ops] == ["a", "d"]
    await store.commit(ops)
    a = store.view().get(Machine, "a")
    assert a is not None and a.agent is not None and a.agent.state == "unknown" and a.agent.since == later
    assert plan_agent_state(store.view(), ["a", "c", "gone"], "unknown", a.agent.message, later) == []
