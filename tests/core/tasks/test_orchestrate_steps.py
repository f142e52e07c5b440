"""The reconciler a step at a time: whatever the step, the steps' writes are `reconcile`'s, in its
order, with its wake time; and the slot walk under it gives every slot once, in order, dense or not."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from treeherd.core.tasks.orchestrate import reconcile, reconcile_in_steps
from treeherd.core.tasks.slots import slots_in_order
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.services import RestartPolicy, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OLD_SPEC = TaskSpec(command=["run", "1"], restart=RestartPolicy(delay_s=0))
NEW_SPEC = TaskSpec(command=["run", "2"], restart=RestartPolicy(delay_s=5))
STATES = [TaskState.PENDING, TaskState.RUNNING, TaskState.FAILED, TaskState.COMPLETE, TaskState.SHUTDOWN]


def ids():
    counter = itertools.count(1)
    return lambda: f"n{next(counter)}"


def machines(down: set[int], drained: set[int]) -> dict[str, Machine]:
    return {
        f"m{i}": Machine(
            id=f"m{i}",
            created_at=NOW,
            updated_at=NOW,
            hostname=f"h{i}",
            availability="drain" if i in drained else "active",
            agent=AgentStatus(state="down" if i in down else "ready"),
        )
        for i in range(4)
    }


task_fields = st.tuples(
    st.integers(0, 12),  # slot
    st.sampled_from(STATES),
    st.booleans(),  # meant to run
    st.one_of(st.none(), st.integers(0, 4)),  # machine (m4 is not in the cluster)
    st.integers(0, 100),  # created, seconds after NOW
    st.sampled_from([1, 2]),  # spec version
)


def make_tasks(rows: list[tuple[int, TaskState, bool, int | None, int, int]], mode: str) -> list[Task]:
    return [
        Task(
            id=f"t{n}",
            created_at=NOW + timedelta(seconds=created),
            updated_at=NOW,
            service_id="svc",
            service_name="web",
            slot=0 if mode == "global" else slot,
            machine_id=None if machine is None else f"m{machine}",
            desired_state=TaskState.RUNNING if meant else TaskState.SHUTDOWN,
            status=TaskStatus(state=state, timestamp=NOW + timedelta(seconds=created)),
            spec=NEW_SPEC if version == 2 else OLD_SPEC,
            spec_version=version,
        )
        for n, (slot, state, meant, machine, created, version) in enumerate(rows)
    ]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(task_fields, max_size=30),
    replicas=st.integers(0, 10),
    mode=st.sampled_from(["replicated", "global"]),
    removing=st.booleans(),
    down=st.sets(st.integers(0, 3)),
    drained=st.sets(st.integers(0, 3)),
    step=st.integers(1, 8),
)
def test_the_steps_write_what_one_call_writes(rows, replicas, mode, removing, down, drained, step):
    service = Service(
        id="svc",
        created_at=NOW,
        updated_at=NOW,
        name="web",
        node_id="n",
        mode=mode,
        replicas=replicas,
        task=NEW_SPEC,
        spec_version=2,
        removing=removing,
    )
    tasks = make_tasks(rows, mode)
    cluster = machines(down, drained)
    later = NOW + timedelta(seconds=50)
    whole = reconcile(service, tasks, cluster, later, ids(), history=2)
    steps = list(reconcile_in_steps(service, tasks, cluster, later, ids(), history=2, step=step))
    assert [op for s in steps for op in s.ops] == whole.ops
    assert steps[-1].wake_at == whole.wake_at


def test_a_large_service_is_decided_in_steps_of_its_slots() -> None:
    service = Service(
        id="svc", created_at=NOW, updated_at=NOW, name="web", node_id="n", replicas=20_000, task=NEW_SPEC
    )
    steps = list(reconcile_in_steps(service, [], machines(set(), set()), NOW, ids(), step=5_000))
    assert [len(s.ops) for s in steps] == [5_000, 5_000, 5_000, 5_000, 0]
    assert [op.object.slot for s in steps for op in s.ops] == list(range(1, 20_001))


@settings(max_examples=300, deadline=None)
@given(
    present=st.one_of(
        st.sets(st.integers(-3, 60)),  # dense
        st.sets(st.integers(-(10**9), 10**9), max_size=20),  # sparse
    ),
    wanted=st.integers(-2, 60),
)
def test_slots_in_order_is_the_sorted_union(present: set[int], wanted: int) -> None:
    assert list(slots_in_order(present, wanted)) == sorted(present | set(range(1, wanted + 1)))
