"""A retired task that is an endpoint leaves its proxies before it is stopped: the reconciler deletes
its registrations and marks it draining, stops it `drain_s` later (the cluster's `drain_delay_s`), and
only then (stop-first) starts its replacement. The same holds for a task of a slot scaled away and for
every task of a removed service."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from tests.core.tasks.rollout_sim import MACHINE, T0, spec

from treeherd.core.tasks.orchestrate import DRAIN_S, reconcile
from treeherd.model.discovery import Endpoint
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Service, Task, TaskStatus, UpdatePolicy, UpdateStatus
from treeherd.model.states import TaskState

OLD, NEW = spec("old"), spec("new")


def world(order: str) -> tuple[Service, Task, Endpoint]:
    service = Service(
        id="svc",
        created_at=T0,
        updated_at=T0,
        name="web",
        node_id="n",
        replicas=1,
        task=NEW,
        previous_task=OLD,
        spec_version=2,
        update=UpdatePolicy(order=order),  # type: ignore[arg-type]
        update_status=UpdateStatus(state="updating", started_at=T0),
    )
    task = Task(
        id="old-1",
        created_at=T0,
        updated_at=T0,
        service_id="svc",
        service_name="web",
        slot=1,
        machine_id=MACHINE.id,
        status=TaskStatus(state=TaskState.RUNNING, timestamp=T0),
        spec=OLD,
        spec_version=1,
    )
    endpoint = Endpoint(
        id="e1",
        created_at=T0,
        updated_at=T0,
        service="web",
        address="127.0.0.1",
        port=30001,
        source="task",
        task_id=task.id,
    )
    return service, task, endpoint


def run(
    service: Service, tasks: list[Task], endpoints: list[Endpoint], seconds: float, drain_s: float = DRAIN_S
):
    ids = iter(f"new-{n}" for n in range(1, 10))
    return reconcile(
        service,
        tasks,
        {MACHINE.id: MACHINE},
        T0 + timedelta(seconds=seconds),
        lambda: next(ids),
        endpoints={e.task_id or "": [e] for e in endpoints},
        drain_s=drain_s,
    )


def task_updates(result) -> list[Task]:
    return [op.object for op in result.ops if isinstance(op, Update) and isinstance(op.object, Task)]


def test_stop_first_drains_then_stops_then_replaces():
    service, task, endpoint = world("stop-first")
    first = run(service, [task], [endpoint], 0)
    service = next(op.object for op in first.ops if isinstance(op.object, Service))
    drained = [op.object for op in first.ops if isinstance(op, Update) and isinstance(op.object, Task)]
    assert [t.drain_until for t in drained] == [T0 + timedelta(seconds=DRAIN_S)]
    assert drained[0].desired_state == TaskState.RUNNING  # still running: in-flight requests finish
    assert [op.object.id for op in first.ops if isinstance(op, Delete)] == ["e1"]
    assert not [op for op in first.ops if isinstance(op, Create)]  # stop-first: nothing new yet
    assert first.wake_at == T0 + timedelta(seconds=DRAIN_S)

    waiting = run(service, drained, [], DRAIN_S / 2)
    assert not [op for op in waiting.ops if isinstance(op.object, Task)]

    done = run(service, drained, [], DRAIN_S)
    stopped = [op.object for op in done.ops if isinstance(op, Update) and isinstance(op.object, Task)]
    assert [t.desired_state for t in stopped] == [TaskState.SHUTDOWN]
    assert [op.object.spec for op in done.ops if isinstance(op, Create)] == [NEW]


def test_start_first_drains_the_old_task_once_the_new_one_is_ready():
    service, task, endpoint = world("start-first")
    first = run(service, [task], [endpoint], 0)
    service = next(op.object for op in first.ops if isinstance(op.object, Service))
    created = [op.object for op in first.ops if isinstance(op, Create)]
    assert [t.spec for t in created] == [NEW] and not [op for op in first.ops if isinstance(op, Delete)]
    ready = msgspec.structs.replace(
        created[0], machine_id=MACHINE.id, status=TaskStatus(state=TaskState.RUNNING, timestamp=T0)
    )
    second = run(service, [task, ready], [endpoint], 1)
    assert [op.object.id for op in second.ops if isinstance(op, Delete)] == ["e1"]
    drained = [op.object for op in second.ops if isinstance(op, Update) and isinstance(op.object, Task)]
    assert [(t.id, t.desired_state) for t in drained] == [("old-1", TaskState.RUNNING)]
    assert drained[0].drain_until is not None


def test_a_task_that_is_no_endpoint_is_stopped_at_once():
    service, task, _ = world("stop-first")
    first = run(service, [task], [], 0)
    stopped = [op.object for op in first.ops if isinstance(op, Update) and isinstance(op.object, Task)]
    assert [(t.desired_state, t.drain_until) for t in stopped] == [(TaskState.SHUTDOWN, None)]


def current(service: Service) -> tuple[Service, Task, Endpoint]:
    """`service` with no update: its one task runs the current spec and is registered."""
    settled = msgspec.structs.replace(
        service, update_status=None, previous_task=None, spec_version=1, task=OLD
    )
    _, task, endpoint = world("stop-first")
    return settled, task, endpoint


def test_a_slot_scaled_away_drains_its_task_then_stops_it():
    service, task, endpoint = current(world("stop-first")[0])
    scaled = msgspec.structs.replace(service, replicas=0)
    first = run(scaled, [task], [endpoint], 0, drain_s=2.5)
    assert [op.object.id for op in first.ops if isinstance(op, Delete)] == ["e1"]
    drained = task_updates(first)
    assert [(t.desired_state, t.drain_until) for t in drained] == [
        (TaskState.RUNNING, T0 + timedelta(seconds=2.5))
    ]
    assert first.wake_at == T0 + timedelta(seconds=2.5)
    assert not task_updates(run(scaled, drained, [], 2))  # still draining: in-flight requests finish
    stopped = task_updates(run(scaled, drained, [], 2.5))
    assert [t.desired_state for t in stopped] == [TaskState.SHUTDOWN]


def test_a_removed_service_drains_its_tasks_before_it_stops_them():
    service, task, endpoint = current(world("stop-first")[0])
    removed = msgspec.structs.replace(service, removing=True)
    first = run(removed, [task], [endpoint], 0)
    assert [op.object.id for op in first.ops if isinstance(op, Delete)] == ["e1"]
    drained = task_updates(first)
    assert [t.desired_state for t in drained] == [TaskState.RUNNING]
    assert not run(removed, drained, [], DRAIN_S / 2).ops  # nothing deleted while a task drains
    stopped = task_updates(run(removed, drained, [], DRAIN_S))
    assert [t.desired_state for t in stopped] == [TaskState.SHUTDOWN]


def test_a_drain_delay_of_zero_stops_at_the_next_step():
    service, task, endpoint = current(world("stop-first")[0])
    scaled = msgspec.structs.replace(service, replicas=0)
    first = run(scaled, [task], [endpoint], 0, drain_s=0)
    assert [op.object.id for op in first.ops if isinstance(op, Delete)] == ["e1"]  # out of the proxies first
    assert (
        task_updates(run(scaled, task_updates(first), [], 0, drain_s=0))[0].desired_state
        == TaskState.SHUTDOWN
    )


def test_a_slot_scaled_away_and_wanted_again_gets_a_new_task():
    service, task, _ = current(world("stop-first")[0])
    stopped = msgspec.structs.replace(
        task, desired_state=TaskState.SHUTDOWN, status=TaskStatus(state=TaskState.SHUTDOWN, timestamp=T0)
    )
    again = run(service, [stopped], [], 5)
    assert [(t.slot, t.spec) for t in (op.object for op in again.ops if isinstance(op, Create))] == [(1, OLD)]
    # A task that ended on its own (restart condition none) leaves its slot empty, as before.
    ended = msgspec.structs.replace(stopped, status=TaskStatus(state=TaskState.COMPLETE, timestamp=T0))
    never = msgspec.structs.replace(
        service,
        task=msgspec.structs.replace(OLD, restart=msgspec.structs.replace(OLD.restart, condition="none")),
    )
    assert not [op for op in run(never, [ended], [], 5).ops if isinstance(op, Create)]
