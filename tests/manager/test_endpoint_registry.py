"""The endpoint registry on a memory store: an agent's report makes its machine's registrations exact,
whoever wrote them (they are read from the store's index by machine), and leaves others' alone."""

from __future__ import annotations

import pytest

from treeherd.manager.endpoints import Registry
from treeherd.model.discovery import Endpoint
from treeherd.model.objects import AgentStatus
from treeherd.model.ops import Create
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskEndpoint
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, machine, node
from treeherd.testing.factories import service as make_service


def task(id: str, machine_id: str) -> Task:
    return Task(
        id=id,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id="s1",
        service_name="api",
        slot=int(id[1:]),
        machine_id=machine_id,
        status=TaskStatus(state=TaskState.RUNNING, timestamp=FIXED_NOW),
        spec=TaskSpec(command=["x"]),
    )


@pytest.fixture
async def store():
    store = MemoryStore()
    await store.open()
    agent = AgentStatus(state="ready", address="127.0.0.1")
    service = make_service("api", "n1", id="s1")
    await store.commit(
        [
            Create(node("corp", id="n1")),
            Create(machine("h1", id="m1", agent=agent)),
            Create(machine("h2", id="m2", agent=AgentStatus(state="ready", address="127.0.0.2"))),
            Create(service),
            *(Create(task(f"t{i}", "m1")) for i in (1, 2, 3)),
            Create(task("t4", "m2")),
        ]
    )
    yield store
    await store.close()


def registered(store: MemoryStore) -> list[tuple[str, str, int]]:
    return sorted((e.machine_id or "-", e.task_id or "-", e.port) for e in store.view().all(Endpoint))


async def test_an_agent_report_makes_its_machine_registrations_exact(store):
    registry = Registry(store, monotonic=lambda: 0.0, ids=Ids("e"))
    await registry.agent_endpoints("m1", [TaskEndpoint(task_id="t1", port=30001)])
    await registry.agent_endpoints("m2", [TaskEndpoint(task_id="t4", port=30004)])
    await registry.register("api", "10.0.0.9", 80, ttl_s=30.0)
    await registry.agent_endpoints(
        "m1", [TaskEndpoint(task_id="t2", port=30002), TaskEndpoint(task_id="t3", port=30003)]
    )
    assert registered(store) == [
        ("-", "-", 80),
        ("m1", "t2", 30002),
        ("m1", "t3", 30003),
        ("m2", "t4", 30004),
    ]
    await registry.agent_endpoints("m1", [])
    assert registered(store) == [("-", "-", 80), ("m2", "t4", 30004)]


async def test_registrations_written_by_another_registry_are_made_exact_too(store):
    """As after a restart or a change of manager: the machine's registrations come from the store."""
    first = Registry(store, monotonic=lambda: 0.0, ids=Ids("e"))
    await first.agent_endpoints("m1", [TaskEndpoint(task_id="t1", port=30001)])
    second = Registry(store, monotonic=lambda: 0.0, ids=Ids("f"))
    await second.agent_endpoints("m2", [])  # loaded before the next registration is written
    await first.agent_endpoints(
        "m1", [TaskEndpoint(task_id="t1", port=30001), TaskEndpoint(task_id="t2", port=30002)]
    )
    await second.agent_endpoints("m1", [TaskEndpoint(task_id="t3", port=30003)])
    assert registered(store) == [("m1", "t3", 30003)]
