"""The orchestrator rolling an update on a memory store with a settable clock, the agent played by the
test: start-first keeps the old task until the new one is healthy, the next batch waits out the monitor
window on the manager's clock, and the update's progress is seen as events of the service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import msgspec
import pytest

from treeherd.core.tree.nodes import plan_create_node
from treeherd.manager.orchestrator import Orchestrator
from treeherd.manager.services import Services
from treeherd.model.discovery import HealthCheck
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.requests import NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus, UpdatePolicy
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, machine
from treeherd.testing.waiting import eventually

WAIT = 5.0
HEALTH = HealthCheck(kind="cmd", command=["true"])


class Clock:
    def __init__(self) -> None:
        self.now = FIXED_NOW

    def __call__(self) -> datetime:
        return self.now


def tasks(store: MemoryStore) -> list[Task]:
    service = store.view().lookup(Service, "name", "web")
    return [] if service is None else store.view().referrers(Task, "service", service.id)


def live(store: MemoryStore) -> list[Task]:
    return [t for t in tasks(store) if t.desired_state <= TaskState.RUNNING]


def web(store: MemoryStore) -> Service:
    found = store.view().lookup(Service, "name", "web")
    assert found is not None
    return found


async def agent_step(store: MemoryStore, clock: Clock, health: str = "healthy") -> None:
    """What an agent would report: tasks meant to run are running (with `health`), the others stopped."""
    ops: list[Update] = []
    for task in tasks(store):
        if task.status.state.terminal:
            continue
        if task.desired_state > TaskState.RUNNING:
            status = TaskStatus(state=TaskState.SHUTDOWN, timestamp=clock.now)
        elif task.status.state != TaskState.RUNNING or task.status.health != health:
            status = TaskStatus(
                state=TaskState.RUNNING, timestamp=clock.now, health=health if task.spec.health else ""
            )
        else:
            continue
        ops.append(Update(msgspec.structs.replace(task, machine_id="m0", status=status)))
    if ops:
        await store.commit(ops)  # type: ignore[arg-type]


async def poke(store: MemoryStore, clock: Clock) -> None:
    """Any change wakes the orchestrator (its timer runs on real time, the test's clock does not)."""
    found = store.view().get(Machine, "m0")
    assert found is not None
    await store.commit([Update(msgspec.structs.replace(found, updated_at=clock.now))])


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[MemoryStore, Clock, Services]]:
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, Ids("n")))
    await store.commit([Create(machine("h0", id="m0", agent=AgentStatus(state="ready", since=FIXED_NOW)))])
    clock = Clock()
    orchestrator = Orchestrator(store, debounce_s=0.005, clock=clock)
    runner = asyncio.create_task(orchestrator.run())
    yield store, clock, Services(store, clock=clock)
    orchestrator.stop()
    async with asyncio.timeout(WAIT):
        await runner
    await store.close()


async def test_start_first_stops_the_old_task_only_once_the_new_one_is_healthy(cluster) -> None:
    store, clock, services = cluster
    policy = UpdatePolicy(parallelism=1, order="start-first", monitor_s=10)
    spec = TaskSpec(command=["v1"], health=HEALTH)
    await services.create(ServiceCreate(name="web", node="corp", replicas=2, task=spec, update=policy))
    await eventually(lambda: len(tasks(store)) == 2, "2 tasks")
    await agent_step(store, clock)
    watch = store.watch()
    await services.update("web", ServiceUpdate(task=msgspec.structs.replace(spec, command=["v2"])))

    await eventually(lambda: len(live(store)) == 3, "a new task beside the old one in slot 1")
    new = next(t for t in live(store) if t.spec.command == ["v2"])
    assert new.slot == 1
    await agent_step(store, clock, health="starting")
    await asyncio.sleep(0.1)
    assert len(live(store)) == 3  # running but not healthy yet: the old one stays
    await agent_step(store, clock, health="healthy")
    await eventually(lambda: len(live(store)) == 2, "the old task of slot 1 stopped")
    assert sorted(t.spec.command[0] for t in live(store)) == ["v1", "v2"]

    # Slot 2 waits until slot 1's new task has been healthy for the monitor window (10 s).
    clock.now += timedelta(seconds=9)
    await poke(store, clock)
    await asyncio.sleep(0.1)
    assert not any(t.slot == 2 and t.spec.command == ["v2"] for t in tasks(store))
    clock.now += timedelta(seconds=2)
    await poke(store, clock)
    await eventually(
        lambda: any(t.slot == 2 and t.spec.command == ["v2"] for t in live(store)), "slot 2 started"
    )
    await agent_step(store, clock)
    await eventually(lambda: len(live(store)) == 2, "slot 2's old task stopped")
    clock.now += timedelta(seconds=11)
    await poke(store, clock)
    await eventually(
        lambda: web(store).update_status is not None and web(store).update_status.state == "completed",
        "completed",
    )  # type: ignore[union-attr]
    status = web(store).update_status
    assert status is not None and status.completed_at == clock.now and status.started_at == FIXED_NOW

    # The update's progress is in the service's own events.
    states: list[str] = []
    async with asyncio.timeout(WAIT):
        async for change in watch:
            for event in change.events:
                if isinstance(event.object, Service) and event.object.update_status is not None:
                    state = event.object.update_status.state
                    if not states or states[-1] != state:
                        states.append(state)
            if states and states[-1] == "completed":
                break
    watch.close()
    assert states == ["updating", "completed"]


async def test_a_new_spec_during_an_update_starts_over_from_the_current_state(cluster) -> None:
    store, clock, services = cluster
    policy = UpdatePolicy(parallelism=1, monitor_s=5)
    await services.create(
        ServiceCreate(name="web", node="corp", replicas=3, task=TaskSpec(command=["v1"]), update=policy)
    )
    await eventually(lambda: len(tasks(store)) == 3, "3 tasks")
    await agent_step(store, clock)
    await services.update("web", ServiceUpdate(task=TaskSpec(command=["v2"])))
    await eventually(lambda: any(t.spec.command == ["v2"] for t in live(store)), "slot 1 on v2")
    await agent_step(store, clock)
    clock.now += timedelta(seconds=1)
    updated = await services.update("web", ServiceUpdate(task=TaskSpec(command=["v3"])))
    assert updated.previous_task is not None and updated.previous_task.command == ["v2"]
    assert updated.update_status is not None and updated.update_status.started_at == clock.now
    for _ in range(12):
        await agent_step(store, clock)
        clock.now += timedelta(seconds=6)
        await poke(store, clock)
        await asyncio.sleep(0.05)
    await eventually(lambda: sorted(t.spec.command[0] for t in live(store)) == ["v3"] * 3, "every slot on v3")
    await agent_step(store, clock)
    clock.now += timedelta(seconds=6)
    await poke(store, clock)
    await eventually(lambda: web(store).update_status.state == "completed", "completed")  # type: ignore[union-attr]
