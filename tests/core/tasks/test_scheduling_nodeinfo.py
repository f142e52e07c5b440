"""NodeSet bookkeeping: which tasks count against a machine, and incremental, idempotent updates."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_support import GIB, machine, node_set, running, service, task

from treeherd.core.tasks.scheduling.nodeinfo import NANO, Demand, NodeSet, counts_against_node, nano_cpus
from treeherd.model.objects import Machine
from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

WEB = service("web", cpus=0.5, memory=GIB, conflicts=["db"])


def with_state(t, state: TaskState, **fields):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(t, status=TaskStatus(state=state, timestamp=FIXED_NOW), **fields)


@pytest.mark.parametrize(
    ("state", "counts"),
    [
        (TaskState.NEW, False),
        (TaskState.PENDING, False),
        (TaskState.ASSIGNED, True),
        (TaskState.ACCEPTED, True),
        (TaskState.STARTING, True),
        (TaskState.RUNNING, True),
        (TaskState.COMPLETE, False),
        (TaskState.SHUTDOWN, False),
        (TaskState.FAILED, False),
        (TaskState.REJECTED, False),
    ],
)
def test_counts_from_assigned_until_terminal(state: TaskState, counts: bool) -> None:
    assert counts_against_node(task(WEB, state=state, machine_id="m1")) is counts
    assert not counts_against_node(task(WEB, state=state))


def test_a_task_told_to_stop_holds_its_resources_until_it_ends() -> None:
    stopping = task(WEB, state=TaskState.RUNNING, machine_id="m1", desired=TaskState.SHUTDOWN)
    assert counts_against_node(stopping)


def test_from_objects_counts_active_tasks() -> None:
    db = service("db", memory=2 * GIB)
    nodes = node_set(
        [machine("m1"), machine("m2")],
        [
            running(WEB, "m1", 1),
            running(WEB, "m1", 2),
            running(db, "m1", 1),
            task(WEB, 3, state=TaskState.FAILED, machine_id="m2"),
            task(WEB, 4),
        ],
    )
    m1, m2 = nodes.get("m1"), nodes.get("m2")
    assert m1 is not None and m2 is not None
    assert (m1.active_tasks, m1.reserved_nano_cpus, m1.reserved_memory) == (3, NANO, 4 * GIB)
    assert m1.reserved_cpus == 1.0
    assert m1.tasks_by_service == {WEB.id: 2, db.id: 1}
    assert m1.tasks_by_name == {"web": 2, "db": 1}
    assert m1.conflicts_declared == {"db": 2}
    assert m1.runs("db") and not m2.runs("db")
    assert (m2.active_tasks, m2.tasks_by_service) == (0, {})
    assert nodes.conflict_declared("db") and not nodes.conflict_declared("web")
    assert len(nodes) == 2
    assert sorted(n.id for n in nodes) == ["m1", "m2"]


def test_task_changed_follows_a_task_through_its_life() -> None:
    nodes = node_set([machine("m1"), machine("m2")])
    m1 = nodes.get("m1")
    assert m1 is not None
    created = task(WEB)
    nodes.task_changed(None, created)
    assert m1.active_tasks == 0
    assigned = with_state(created, TaskState.ASSIGNED, machine_id="m1")
    nodes.task_changed(created, assigned)
    assert (m1.active_tasks, m1.reserved_memory, nodes.counted(created.id)) == (1, GIB, "m1")
    started = with_state(assigned, TaskState.RUNNING)
    nodes.task_changed(assigned, started)
    assert m1.active_tasks == 1
    finished = with_state(started, TaskState.COMPLETE)
    nodes.task_changed(started, finished)
    assert (m1.active_tasks, m1.reserved_memory, m1.tasks_by_service, m1.conflicts_declared) == (0, 0, {}, {})
    assert nodes.counted(created.id) is None
    assert not nodes.conflict_declared("db")
    nodes.task_changed(finished, None)
    assert m1.active_tasks == 0


def test_updates_are_idempotent_and_do_not_trust_old() -> None:
    nodes = node_set([machine("m1"), machine("m2")])
    active = running(WEB, "m1", 1)
    for _ in range(3):
        nodes.task_changed(None, active)
    m1, m2 = nodes.get("m1"), nodes.get("m2")
    assert m1 is not None and m2 is not None
    assert m1.active_tasks == 1
    # A move (or an event whose `old` is stale) is resolved by what is counted, not by `old`.
    moved = msgspec.structs.replace(active, machine_id="m2")
    nodes.task_changed(None, moved)
    assert (m1.active_tasks, m2.active_tasks) == (0, 1)
    nodes.task_changed(moved, None)
    assert (m1.active_tasks, m2.active_tasks) == (0, 0)
    nodes.task_changed(moved, None)
    assert m2.active_tasks == 0


def test_a_changed_reservation_replaces_the_old_one() -> None:
    nodes = node_set([machine("m1")])
    first = running(WEB, "m1", 1)
    nodes.task_changed(None, first)
    bigger = msgspec.structs.replace(first, spec=service("web", memory=3 * GIB).task)
    nodes.task_changed(first, bigger)
    m1 = nodes.get("m1")
    assert m1 is not None
    assert (m1.active_tasks, m1.reserved_memory, m1.reserved_nano_cpus) == (1, 3 * GIB, 0)


def test_services_sharing_one_spec_object_are_counted_apart() -> None:
    """The demand remembered for the last spec is the service's own, not that of the last service
    seen with the same spec object."""
    api = msgspec.structs.replace(service("api"), task=WEB.task)
    assert api.task is WEB.task and api.id != WEB.id
    nodes = node_set([machine("m1")])
    for t in (running(WEB, "m1", 1), running(api, "m1", 1), running(WEB, "m1", 2)):
        nodes.task_changed(None, t)
        nodes.task_changed(t, with_state(t, TaskState.RUNNING))  # a status change: same spec object
    m1 = nodes.get("m1")
    assert m1 is not None
    assert m1.tasks_by_service == {WEB.id: 2, api.id: 1}
    assert m1.tasks_by_name == {"web": 2, "api": 1}


def test_assign_then_commit_event_counts_once_and_release_undoes() -> None:
    nodes = node_set([machine("m1")])
    m1 = nodes.get("m1")
    assert m1 is not None
    pending_task = task(WEB)
    nodes.assign(pending_task.id, m1, Demand.of(pending_task))
    assert (m1.active_tasks, nodes.counted(pending_task.id)) == (1, "m1")
    # The shell's commit comes back as an event: already counted.
    nodes.task_changed(pending_task, with_state(pending_task, TaskState.ASSIGNED, machine_id="m1"))
    assert m1.active_tasks == 1
    # A dropped decision: release it, or feed the task as stored (still pending): same effect.
    nodes.assign("other", m1, Demand.of(pending_task))
    assert nodes.release("other") is True
    assert nodes.release("other") is False
    nodes.assign("third", m1, Demand.of(pending_task))
    nodes.task_changed(None, task(WEB, 9, id="third"))
    assert (m1.active_tasks, m1.reserved_memory) == (1, GIB)


def test_tasks_on_unknown_machines_wait_on_a_placeholder() -> None:
    nodes = NodeSet()
    nodes.task_changed(None, running(WEB, "m9", 1))
    assert nodes.get("m9") is None
    assert nodes.nodes() == []
    assert len(nodes) == 0
    nodes.set_machine(machine("m9"))
    m9 = nodes.get("m9")
    assert m9 is not None
    assert (m9.active_tasks, m9.reserved_memory) == (1, GIB)


def test_removed_machine_keeps_its_counts_until_its_tasks_end() -> None:
    active = running(WEB, "m1", 1)
    nodes = node_set([machine("m1"), machine("m2")], [active])
    nodes.remove_machine("m1")
    nodes.remove_machine("m2")
    nodes.remove_machine("unknown")
    assert nodes.get("m1") is None and nodes.get("m2") is None
    assert nodes.counted(active.id) == "m1"
    nodes.task_changed(active, with_state(active, TaskState.FAILED))
    assert nodes.counted(active.id) is None
    nodes.set_machine(machine("m1"))
    m1 = nodes.get("m1")
    assert m1 is not None and m1.active_tasks == 0


def test_a_task_changing_on_a_placeholder_it_alone_holds_stays_counted() -> None:
    # Found by the rebuild property: re-counting the last task of a placeholder used to drop the
    # placeholder under it.
    nodes = NodeSet()
    first = running(WEB, "gone", 1)
    nodes.task_changed(None, first)
    changed = msgspec.structs.replace(first, spec=service("web", memory=2 * GIB).task)
    nodes.task_changed(first, changed)
    nodes.set_machine(machine("gone"))
    gone = nodes.get("gone")
    assert gone is not None and (gone.active_tasks, gone.reserved_memory) == (1, 2 * GIB)
    nodes.task_changed(changed, None)
    assert gone.active_tasks == 0


def test_set_machine_updates_capacity_and_version() -> None:
    nodes = node_set([machine("m1", cpus=2.0, memory=4 * GIB)])
    nodes.set_machine(machine("m1", cpus=4.0, memory=8 * GIB, version=7))
    m1 = nodes.get("m1")
    assert m1 is not None
    assert (m1.nano_cpus_capacity, m1.memory_capacity, m1.version) == (4 * NANO, 8 * GIB, 7)


def test_cpu_sums_are_exact() -> None:
    # 0.1 + 0.2 + ... in floats drifts; in nano-CPUs ten tenths are exactly one CPU.
    tenth = service("tenth", cpus=0.1)
    nodes = node_set([machine("m1", cpus=1.0)], [running(tenth, "m1", slot) for slot in range(9)])
    m1 = nodes.get("m1")
    assert m1 is not None
    assert m1.cpus_fit(nano_cpus(0.1))
    assert not m1.cpus_fit(nano_cpus(0.2))
    for slot in range(9):
        nodes.task_changed(None, with_state(running(tenth, "m1", slot), TaskState.SHUTDOWN))
    assert m1.reserved_nano_cpus == 0


def test_zero_capacity_fits_no_reservation_but_fits_tasks_that_reserve_nothing() -> None:
    nodes = node_set([machine("m1", cpus=0.0, memory=0)])
    m1 = nodes.get("m1")
    assert m1 is not None
    assert m1.cpus_fit(0) and m1.memory_fits(0)
    assert not m1.cpus_fit(1) and not m1.memory_fits(1)


# ---- incremental == rebuilt, whatever the order of events --------------------------------------
SERVICES = [service("a", cpus=0.25, memory=GIB), service("b", conflicts=["a"]), service("c", memory=3)]
STATES = [TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING, TaskState.SHUTDOWN, TaskState.FAILED]
MACHINE_IDS = ["m0", "m1"]

event = st.one_of(
    st.tuples(
        st.just("task"),
        st.integers(0, 2),
        st.sampled_from(SERVICES),
        st.sampled_from(STATES),
        st.sampled_from([None, *MACHINE_IDS]),
    ),
    st.tuples(st.just("delete"), st.integers(0, 2)),
    st.tuples(st.just("machine"), st.sampled_from(MACHINE_IDS), st.sampled_from([1.0, 2.0])),
    st.tuples(st.just("remove"), st.sampled_from(MACHINE_IDS)),
)


def snapshot(nodes: NodeSet) -> dict[str, tuple[object, ...]]:
    return {
        n.id: (
            n.machine,
            n.active_tasks,
            n.reserved_nano_cpus,
            n.reserved_memory,
            n.tasks_by_service,
            n.tasks_by_name,
            n.conflicts_declared,
        )
        for n in nodes.nodes()
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=40))
def test_incremental_updates_match_a_rebuild(events: list[tuple[object, ...]]) -> None:
    known: dict[str, Machine] = {m: machine(m) for m in MACHINE_IDS}
    nodes = NodeSet.from_objects(known.values(), [])
    tasks: dict[str, Task] = {}
    for item in events:
        if item[0] == "task":
            _, number, svc, state, machine_id = item
            new = task(svc, id=f"t{number}", state=state, machine_id=machine_id)  # type: ignore[arg-type]
            nodes.task_changed(tasks.get(new.id), new)
            tasks[new.id] = new
        elif item[0] == "delete":
            old = tasks.pop(f"t{item[1]}", None)
            nodes.task_changed(old, None)
        elif item[0] == "machine":
            known[str(item[1])] = machine(str(item[1]), cpus=float(item[2]))  # type: ignore[arg-type]
            nodes.set_machine(known[str(item[1])])
        else:
            known.pop(str(item[1]), None)
            nodes.remove_machine(str(item[1]))
    rebuilt = NodeSet.from_objects(known.values(), tasks.values())
    assert snapshot(nodes) == snapshot(rebuilt)
    for svc in SERVICES:
        running_on = sorted(n.id for n in nodes.running(svc.id))
        assert running_on == sorted(n.id for n in nodes.nodes() if svc.id in n.tasks_by_service)
        assert running_on == sorted(n.id for n in rebuilt.running(svc.id))
        assert nodes.conflict_declared(svc.name) is rebuilt.conflict_declared(svc.name)
    for t in tasks.values():
        assert nodes.counted(t.id) == rebuilt.counted(t.id)
