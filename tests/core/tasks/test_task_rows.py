"""`service ps` rows built in bounded steps: the same rows, in the same order, as one sort of the whole
list would give, whatever the slots, the step and the filter; and no step does more than its share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from treeherd.core.tasks.rollout import stale_versions
from treeherd.core.tasks.slots import desired_running
from treeherd.core.tasks.task_rows import task_row, task_rows
from treeherd.model.objects import Machine
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CURRENT = TaskSpec(command=["run", "v2"])
OLDER = TaskSpec(command=["run", "v1"])


class Machines:
    """The one read rows make of a view: a machine by id."""

    def __init__(self, count: int) -> None:
        self.machines = {
            f"m{i}": Machine(id=f"m{i}", created_at=NOW, updated_at=NOW, hostname=f"host-{i}")
            for i in range(count)
        }

    def get(self, cls: type, id: str) -> Machine | None:
        assert cls is Machine
        return self.machines.get(id)


SERVICE = Service(
    id="svc", created_at=NOW, updated_at=NOW, name="web", node_id="n", task=CURRENT, spec_version=2
)


def task(n: int, slot: int, machine: int | None, running: bool, created: int, version: int) -> Task:
    return Task(
        id=f"t{n:05}",
        created_at=NOW + timedelta(seconds=created),
        updated_at=NOW,
        service_id="svc",
        service_name="web",
        slot=slot,
        machine_id=None if machine is None else f"m{machine}",
        desired_state=TaskState.RUNNING if running else TaskState.SHUTDOWN,
        status=TaskStatus(state=TaskState.RUNNING if running else TaskState.SHUTDOWN, timestamp=NOW),
        spec=CURRENT if version == 2 else OLDER,
        spec_version=version,
    )


def one_sort(view: Machines, tasks: list[Task], all_tasks: bool) -> list:
    """The rows as a single sort of the whole list orders them (the order `service ps` has always had)."""
    if not all_tasks:
        tasks = [t for t in tasks if desired_running(t)]
    order = sorted(
        tasks, key=lambda t: (t.slot, t.machine_id or "", not desired_running(t), -t.created_at.timestamp())
    )
    stale = stale_versions(SERVICE, tasks)
    return [task_row(view, t, outdated=t.spec_version in stale) for t in order]  # type: ignore[arg-type]


slots = st.one_of(
    st.integers(min_value=0, max_value=40),  # dense, as a replicated service's
    st.just(0),  # a global service: every task in slot 0
    st.integers(min_value=0, max_value=10**9),  # sparse
)
tasks_strategy = st.lists(
    st.tuples(
        slots,
        st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
        st.booleans(),
        st.integers(min_value=0, max_value=1000),
        st.sampled_from([1, 2]),
    ),
    max_size=120,
).map(lambda rows: [task(n, *row) for n, row in enumerate(rows)])


@settings(max_examples=300, deadline=None)
@given(tasks=tasks_strategy, step=st.integers(min_value=1, max_value=50), all_tasks=st.booleans())
def test_steps_give_the_rows_of_one_sort(tasks: list[Task], step: int, all_tasks: bool) -> None:
    view = Machines(6)
    steps = list(task_rows(view, SERVICE, tasks, all_tasks=all_tasks, step=step))  # type: ignore[arg-type]
    assert [row for rows in steps for row in rows] == one_sort(view, tasks, all_tasks)


@settings(max_examples=100, deadline=None)
@given(tasks=tasks_strategy, step=st.integers(min_value=1, max_value=50))
def test_no_step_makes_much_more_than_a_step_of_rows(tasks: list[Task], step: int) -> None:
    # A step may finish the slot it is in: at most a step of rows plus one slot's tasks.
    largest_slot = max((sum(t.slot == s.slot for t in tasks) for s in tasks), default=0)
    for rows in task_rows(Machines(6), SERVICE, tasks, step=step):  # type: ignore[arg-type]
        assert len(rows) < step + largest_slot


def test_a_large_list_is_made_in_many_steps_each_bounded() -> None:
    tasks = [task(n, n + 1, n % 6, True, n, 2) for n in range(20_000)]
    tasks.reverse()  # the order the view returns them in is no order at all
    steps = list(task_rows(Machines(6), SERVICE, tasks, step=1_000))  # type: ignore[arg-type]
    # 20 steps to read the tasks, 20 to make their rows: the driver may let its loop run 40 times.
    assert len(steps) >= 40
    assert 0 < max(len(rows) for rows in steps) <= 1_000
    rows = [row for rows in steps for row in rows]
    assert [row.slot for row in rows] == list(range(1, 20_001))
    assert rows[0].hostname == "host-0" and rows[0].outdated is False


def test_outdated_rows_and_missing_machines() -> None:
    tasks = [task(0, 1, 0, True, 0, 1), task(1, 1, None, True, 5, 2), task(2, 2, 9, False, 0, 2)]
    rows = [row for rows in task_rows(Machines(1), SERVICE, tasks) for row in rows]  # type: ignore[arg-type]
    assert [(r.id, r.hostname, r.outdated) for r in rows] == [
        ("t00001", None, False),  # no machine yet sorts first in its slot
        ("t00000", "host-0", True),  # spec version 1, not the service's spec: outdated
        ("t00002", None, False),  # a machine the view does not hold: no hostname
    ]
