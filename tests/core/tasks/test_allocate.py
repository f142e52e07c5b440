"""The allocator's decision: dynamic ports unique across live tasks, fixed ports kept, NEW -> PENDING."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from treeherd.core.tasks.allocate import PortPool, allocate, creation_allocation, dynamic_ports
from treeherd.model.services import PortSpec, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def task(id, ports=(), state=TaskState.NEW, restart_at=None, desired=TaskState.RUNNING):
    return Task(
        id=id,
        created_at=NOW,
        updated_at=NOW,
        service_id="s",
        service_name="web",
        status=TaskStatus(state=state, timestamp=NOW),
        desired_state=desired,
        spec=TaskSpec(command=["x"], ports=list(ports)),
        restart_at=restart_at,
    )


def test_dynamic_and_fixed_ports():
    pool = PortPool(30000, 30010)
    ops, waiting = allocate(
        [task("a", [PortSpec(name="http"), PortSpec(name="admin", port=8080)])], pool, NOW
    )
    (op,) = ops
    assert op.object.ports == {"http": 30000, "admin": 8080}
    assert op.object.status.state == TaskState.PENDING
    assert "http=30000" in op.object.status.message
    assert dynamic_ports(op.object) == [30000]
    assert waiting == []


def test_ports_are_unique_across_tasks_and_reused_only_after_release():
    pool = PortPool(30000, 30002)
    ops, _ = allocate([task(f"t{i}", [PortSpec(name="p")]) for i in range(3)], pool, NOW)
    assert sorted(op.object.ports["p"] for op in ops) == [30000, 30001, 30002]
    ops, _ = allocate([task("x", [PortSpec(name="p")])], pool, NOW)
    assert ops[0].object.status.state == TaskState.NEW  # exhausted: stays NEW and says why
    assert "no free host port" in ops[0].object.status.message
    pool.release([30001])
    ops, _ = allocate([task("x", [PortSpec(name="p")])], pool, NOW)
    assert ops[0].object.ports == {"p": 30001}


def test_restart_delay_holds_the_task():
    later = NOW + timedelta(seconds=5)
    ops, waiting = allocate([task("a", restart_at=later)], PortPool(), NOW)
    assert ops == [] and waiting == ["a"]
    ops, waiting = allocate([task("a", restart_at=later)], PortPool(), later)
    assert [op.object.status.state for op in ops] == [TaskState.PENDING]


def test_only_new_tasks_meant_to_run():
    tasks = [task("a", state=TaskState.PENDING), task("b", desired=TaskState.SHUTDOWN)]
    assert allocate(tasks, PortPool(), NOW) == ([], [])


def test_tasks_wait_for_their_required_services():
    waiting = msgspec.structs.replace(task("w"), spec=TaskSpec(command=["x"], requires=["db", "cache"]))
    ops, left = allocate([waiting], PortPool(), NOW, lambda name: name == "db")
    assert left == ["w"]
    assert [op.object.status.message for op in ops] == [
        "waiting for required services without an endpoint: cache"
    ]
    ops, left = allocate([waiting], PortPool(), NOW, lambda name: True)
    assert left == [] and ops[0].object.status.state == TaskState.PENDING


def test_a_task_that_needs_nothing_is_allocated_at_creation():
    ports, status = creation_allocation(task("a").spec, None, NOW)
    assert (ports, status.state, status.message) == ({}, TaskState.PENDING, "allocated")
    ports, status = creation_allocation(task("b", [PortSpec(name="admin", port=8080)]).spec, None, NOW)
    assert (ports, status.state, status.message) == (
        {"admin": 8080},
        TaskState.PENDING,
        "allocated admin=8080",
    )


def test_a_task_that_needs_the_allocator_is_created_new():
    dynamic = task("a", [PortSpec(name="http"), PortSpec(name="admin", port=8080)])
    requiring = TaskSpec(command=["x"], requires=["db"])
    assert creation_allocation(dynamic.spec, None, NOW) is None
    assert creation_allocation(requiring, None, NOW) is None
    assert creation_allocation(task("c").spec, NOW + timedelta(seconds=5), NOW) is None


def test_allocation_at_creation_is_what_the_allocator_would_write():
    """The shortcut and the allocator agree: same state, ports and message."""
    fixed = [
        [],
        [PortSpec(name="admin", port=8080)],
        [PortSpec(name="a", port=1), PortSpec(name="b", port=2)],
    ]
    for ports in fixed:
        new = task("a", ports)
        (op,) = allocate([new], PortPool(), NOW)[0]
        assert creation_allocation(new.spec, None, NOW) == (op.object.ports, op.object.status)
