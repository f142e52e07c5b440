"""The orchestrator and allocator components on a memory store: a service becomes pending tasks with
ports; scaling, endings and removal converge."""

from __future__ import annotations

import asyncio
import functools

import msgspec
import pytest

from treeherd.core.tree.nodes import plan_create_node
from treeherd.manager import commits
from treeherd.manager.allocator import Allocator
from treeherd.manager.orchestrator import Orchestrator
from treeherd.manager.services import Services
from treeherd.model.ops import Update
from treeherd.model.requests import NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import PortSpec, RestartPolicy, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing import waiting
from treeherd.testing.factories import FIXED_NOW, Ids

WAIT = 5.0


eventually = functools.partial(waiting.eventually, timeout_s=WAIT, poll_s=0.02)


@pytest.fixture
async def loop():
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, Ids("n")))
    components = [Orchestrator(store, debounce_s=0.005), Allocator(store, debounce_s=0.005)]
    tasks = [asyncio.create_task(c.run()) for c in components]
    yield store, Services(store)
    for c in components:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    await store.close()


def tasks_of(store, name) -> list[Task]:
    service = store.view().lookup(Service, "name", name)
    return [] if service is None else store.view().referrers(Task, "service", service.id)


def meant(store, name):
    return [t for t in tasks_of(store, name) if t.desired_state <= TaskState.RUNNING]


async def test_service_becomes_pending_tasks_with_unique_ports(loop):
    store, services = loop
    spec = TaskSpec(command=["serve"], ports=[PortSpec(name="http")], restart=RestartPolicy(delay_s=0))
    await services.create(ServiceCreate(name="web", node="corp", replicas=5, task=spec))
    await eventually(
        lambda: (
            len(meant(store, "web")) == 5
            and all(t.status.state == TaskState.PENDING for t in meant(store, "web"))
        ),
        "5 pending tasks",
    )
    ports = [t.ports["http"] for t in meant(store, "web")]
    assert len(set(ports)) == 5
    assert sorted(t.slot for t in meant(store, "web")) == [1, 2, 3, 4, 5]

    await services.update("web", ServiceUpdate(replicas=2))
    await eventually(lambda: sorted(t.slot for t in meant(store, "web")) == [1, 2], "scaled to 2")


async def test_ended_task_is_restarted(loop):
    store, services = loop
    spec = TaskSpec(command=["x"], restart=RestartPolicy(delay_s=0))
    await services.create(ServiceCreate(name="job", node="corp", replicas=1, task=spec))
    await eventually(lambda: [t.status.state for t in meant(store, "job")] == [TaskState.PENDING], "pending")
    (first,) = meant(store, "job")
    # an agent reports it failed
    failed = msgspec.structs.replace(
        first, machine_id=None, status=TaskStatus(state=TaskState.FAILED, timestamp=FIXED_NOW)
    )
    await store.commit([Update(failed)])
    await eventually(
        lambda: len(meant(store, "job")) == 1 and meant(store, "job")[0].id != first.id, "a restart"
    )
    assert meant(store, "job")[0].cause.startswith("restart after task")


async def test_removed_service_disappears_with_its_tasks(loop):
    store, services = loop
    await services.create(ServiceCreate(name="gone", node="corp", replicas=3, task=TaskSpec(command=["x"])))
    await eventually(lambda: len(meant(store, "gone")) == 3, "3 tasks")
    await services.remove("gone")
    await eventually(lambda: store.view().lookup(Service, "name", "gone") is None, "the service deleted")
    assert store.view().count(Task) == 0


async def test_a_big_service_is_created_a_chunk_at_a_time(loop, monkeypatch):
    store, services = loop
    monkeypatch.setattr(commits, "CHUNK", 10)
    creates_per_transaction: list[int] = []
    watch = store.watch(store.revision)

    async def count_creates() -> None:
        async for change in watch:
            created = sum(1 for e in change.events if e.type == "created" and isinstance(e.object, Task))
            if created:
                creates_per_transaction.append(created)

    counting = asyncio.create_task(count_creates())
    try:
        spec = TaskSpec(command=["x"], restart=RestartPolicy(delay_s=0))
        await services.create(ServiceCreate(name="big", node="corp", replicas=25, task=spec))
        await eventually(
            lambda: (
                len(meant(store, "big")) == 25
                and all(t.status.state == TaskState.PENDING for t in meant(store, "big"))
            ),
            "25 pending tasks",
        )
    finally:
        watch.close()
        counting.cancel()
    assert creates_per_transaction == [10, 10, 5]
    assert sorted(t.slot for t in meant(store, "big")) == list(range(1, 26))
