"""The orchestrator's brake on mass node loss, on a memory store with a settable clock: one lost
machine's tasks are replaced at once, a wave of losses waits out the hold, a machine back in time keeps
its tasks."""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import datetime, timedelta

import msgspec
import pytest

from treeherd.core.tree.nodes import plan_create_node
from treeherd.manager.orchestrator import Orchestrator
from treeherd.manager.services import Services
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import ClusterSettings, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing import waiting
from treeherd.testing.factories import FIXED_NOW, Ids, machine

WAIT = 5.0


eventually = functools.partial(waiting.eventually, timeout_s=WAIT, poll_s=0.02)


async def settle() -> None:
    await asyncio.sleep(0.2)


class Clock:
    """A settable clock; after `run()`, one that follows real time from where it stood."""

    def __init__(self) -> None:
        self._now = FIXED_NOW
        self._running_from: float | None = None

    @property
    def now(self) -> datetime:
        if self._running_from is None:
            return self._now
        return self._now + timedelta(seconds=time.monotonic() - self._running_from)

    @now.setter
    def now(self, value: datetime) -> None:
        self._now = value

    def run(self) -> None:
        self._running_from = time.monotonic()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def cluster():
    """10 ready machines, service `web` with one running task on each."""
    store = MemoryStore()
    await store.open()
    await store.commit(plan_create_node(store.view(), NodeCreate(path="corp"), FIXED_NOW, Ids("n")))
    machines = [
        machine(f"h{i}", id=f"m{i}", agent=AgentStatus(state="ready", since=FIXED_NOW)) for i in range(10)
    ]
    await store.commit([Create(m) for m in machines])
    clock = Clock()
    orchestrator = Orchestrator(store, debounce_s=0.005, clock=clock)
    runner = asyncio.create_task(orchestrator.run())
    services = Services(store)
    await services.create(ServiceCreate(name="web", node="corp", replicas=10, task=TaskSpec(command=["x"])))
    await eventually(lambda: len(tasks(store)) == 10, "10 tasks")
    placed = [
        msgspec.structs.replace(
            t,
            machine_id=f"m{t.slot - 1}",
            status=TaskStatus(state=TaskState.RUNNING, timestamp=FIXED_NOW),
        )
        for t in tasks(store)
    ]
    await store.commit([Update(t) for t in placed])
    yield store, clock
    orchestrator.stop()
    await asyncio.wait_for(runner, WAIT)
    await store.close()


def tasks(store: MemoryStore) -> list[Task]:
    service = store.view().lookup(Service, "name", "web")
    return [] if service is None else store.view().referrers(Task, "service", service.id)


def live_on(store: MemoryStore, machine_id: str) -> list[Task]:
    return [t for t in tasks(store) if t.machine_id == machine_id and t.desired_state == TaskState.RUNNING]


async def set_state(store: MemoryStore, clock: Clock, machine_id: str, state: str) -> None:
    found = store.view().get(Machine, machine_id)
    assert found is not None and found.agent is not None
    agent = msgspec.structs.replace(found.agent, state=state, since=clock.now)
    await store.commit([Update(msgspec.structs.replace(found, agent=agent))])


async def test_one_loss_is_replaced_a_wave_waits_out_the_hold(cluster):
    store, clock = cluster
    await set_state(store, clock, "m0", "down")
    await eventually(lambda: not live_on(store, "m0"), "m0's task replaced")

    clock.now += timedelta(seconds=1)
    await set_state(store, clock, "m1", "down")
    await set_state(store, clock, "m2", "down")
    await settle()
    # Three machines lost within the hold (limit: 10% of 10 = 1): m1's and m2's tasks wait.
    assert len(live_on(store, "m1")) == 1 and len(live_on(store, "m2")) == 1

    # m1 comes back in time: it keeps its task. m2 stays down past the hold: replaced.
    await set_state(store, clock, "m1", "ready")
    clock.now += timedelta(seconds=61)
    await set_state(store, clock, "m3", "ready")  # any change wakes the orchestrator
    await eventually(lambda: not live_on(store, "m2"), "m2's task replaced after the hold")
    assert len(live_on(store, "m1")) == 1
    replacement = [t for t in tasks(store) if t.slot == 3 and t.desired_state == TaskState.RUNNING]
    assert len(replacement) == 1 and replacement[0].machine_id is None
    assert "machine h2 is down" in replacement[0].cause


async def test_held_tasks_are_replaced_when_the_hold_ends_with_no_other_change(cluster):
    store, clock = cluster
    settings = ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW, node_loss_hold_s=1.0)
    await store.commit([Create(settings)])
    clock.run()  # from here the orchestrator's clock follows real time
    await set_state(store, clock, "m0", "down")
    await set_state(store, clock, "m1", "down")
    await settle()
    # Two of ten within the hold (limit 1): both keep their tasks for now.
    assert len(live_on(store, "m0")) == 1 and len(live_on(store, "m1")) == 1
    # Nothing else changes: the hold's end alone must release them.
    await eventually(lambda: not live_on(store, "m0") and not live_on(store, "m1"), "replaced after the hold")
