"""An outdated task that is an endpoint leaves its proxies before it is stopped: the reconciler deletes
its registrations and marks it draining, stops it `DRAIN_S` later, and only then (stop-first) starts
its replacement."""

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


def run(service: Service, tasks: list[Task], endpoints: list[Endpoint], seconds: float):
    ids = iter(f"new-{n}" for n in range(1, 10))
    return reconcile(
        service,
        tasks,
        {MACHINE.id: MACHINE},
        T0 + timedelta(seconds=seconds),
        lambda: next(ids),
        endpoints={e.task_id or "": [e] for e in endpoints},
    )


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
