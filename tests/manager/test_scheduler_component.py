"""Orchestrator + allocator + scheduler on a memory store: a service's tasks end up ASSIGNED, spread
over ready machines; tasks no machine can take say why, and are placed once a machine can."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter

import msgspec
import pytest

from treeherd.core.tree.nodes import plan_create_node
from treeherd.manager import scheduler as scheduler_module
from treeherd.manager.allocator import Allocator
from treeherd.manager.orchestrator import Orchestrator
from treeherd.manager.scheduler import Scheduler
from treeherd.manager.services import Services
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import Placement, Resources, Service, Task, TaskSpec
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing import waiting
from treeherd.testing.factories import FIXED_NOW, Ids

WAIT = 5.0


eventually = functools.partial(waiting.eventually, timeout_s=WAIT, poll_s=0.02)


def machine(index: int, state: str = "ready", **fields) -> Machine:
    return Machine(
        id=f"m{index}",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        hostname=f"host-{index}",
        cpus=4,
        memory_bytes=8 << 30,
        agent=AgentStatus(state=state),
        **fields,
    )


@pytest.fixture
async def cluster():
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, Ids("n")))
    await store.commit([Create(machine(i)) for i in range(3)] + [Create(machine(9, state="down"))])
    components = [
        Orchestrator(store, debounce_s=0.005),
        Allocator(store, debounce_s=0.005),
        Scheduler(store, debounce_s=0.005),
    ]
    running = [asyncio.create_task(c.run()) for c in components]
    yield store, Services(store)
    for c in components:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*running), WAIT)
    await store.close()


def meant(store, name) -> list[Task]:
    service = store.view().lookup(Service, "name", name)
    return [
        t for t in store.view().referrers(Task, "service", service.id) if t.desired_state <= TaskState.RUNNING
    ]


async def test_tasks_are_assigned_and_spread(cluster):
    store, services = cluster
    await services.create(ServiceCreate(name="web", node="corp", replicas=7, task=TaskSpec(command=["x"])))
    await eventually(
        lambda: (
            len(meant(store, "web")) == 7
            and all(t.status.state == TaskState.ASSIGNED for t in meant(store, "web"))
        ),
        "7 assigned",
    )
    per_machine = Counter(t.machine_id for t in meant(store, "web"))
    assert set(per_machine) == {"m0", "m1", "m2"}  # never the down machine
    assert max(per_machine.values()) - min(per_machine.values()) <= 1


async def test_unplaceable_tasks_explain_and_are_placed_later(cluster):
    store, services = cluster
    spec = TaskSpec(
        command=["x"],
        placement=Placement(constraints=["node.labels.disk==ssd"]),
        resources=Resources(reserve_memory=1 << 30),
    )
    await services.create(ServiceCreate(name="db", node="corp", replicas=2, task=spec))
    await eventually(
        lambda: (
            all("node.labels.disk==ssd" in t.placement_error for t in meant(store, "db"))
            and len(meant(store, "db")) == 2
        ),
        "an explanation",
    )
    assert all(t.status.state == TaskState.PENDING for t in meant(store, "db"))
    labelled = msgspec.structs.replace(store.view().get(Machine, "m1"), labels={"disk": "ssd"})
    await store.commit([Update(labelled)])
    await eventually(
        lambda: all(
            t.status.state == TaskState.ASSIGNED and t.machine_id == "m1" for t in meant(store, "db")
        ),
        "placed on the ssd machine",
    )
    assert all(t.placement_error == "" for t in meant(store, "db"))


async def test_global_service_on_every_ready_machine(cluster):
    store, services = cluster
    await services.create(
        ServiceCreate(name="agentd", node="corp", mode="global", task=TaskSpec(command=["x"]))
    )
    await eventually(
        lambda: (
            sorted(t.machine_id for t in meant(store, "agentd") if t.status.state == TaskState.ASSIGNED)
            == ["m0", "m1", "m2"]
        ),
        "3 global",
    )


async def test_placements_are_committed_machine_by_machine(cluster, monkeypatch):
    """A batch larger than a chunk goes in chunks of whole machines: each agent hears of its tasks in
    one message, not a few in each chunk (spread placement decides them round the machines)."""
    store, services = cluster
    monkeypatch.setattr(scheduler_module, "chunk_size", lambda view: 4)
    placements: list[list[str]] = []
    commit = store.commit

    async def recording(ops):
        placed = [
            op.object.machine_id
            for op in ops
            if isinstance(op.object, Task) and op.object.status.state == TaskState.ASSIGNED
        ]
        if placed:
            placements.append(placed)
        return await commit(ops)

    monkeypatch.setattr(store, "commit", recording)
    await services.create(ServiceCreate(name="web", node="corp", replicas=12, task=TaskSpec(command=["x"])))
    await eventually(
        lambda: sum(len(p) for p in placements) == 12 and len(meant(store, "web")) == 12, "12 placed"
    )
    assert placements == [["m0"] * 4, ["m1"] * 4, ["m2"] * 4]
