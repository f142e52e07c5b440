"""The state's tallies (a service's running and desired tasks) equal a count over its tasks after any
sequence of transactions, failed ones (rolled back) and replays included, and after a reload; while a
batch of them is written, `PreBatchView` reads (tallies included) as the state before the batch."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import T0, answers, node, reads_of

from treeherd.model.errors import AlreadyExists
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.prebatch import PreBatchView
from treeherd.store.state import State, Undo

SERVICES = ("s1", "s2")
STATES = (TaskState.NEW, TaskState.ASSIGNED, TaskState.STARTING, TaskState.RUNNING, TaskState.FAILED)
DESIRED = (TaskState.RUNNING, TaskState.SHUTDOWN, TaskState.READY)


def base_state() -> State:
    state = State()
    ops: list[Op] = [Create(node("n1"))]
    for name in SERVICES:
        service = Service(
            id=name,
            name=name,
            node_id="n1",
            task=TaskSpec(command=["sleep", "60"]),
            created_at=T0,
            updated_at=T0,
        )
        ops.append(Create(service))
    state.apply(ops, 1)
    return state


def task(id: str, service: str, desired: TaskState, state: TaskState) -> Task:
    return Task(
        id=id,
        created_at=T0,
        updated_at=T0,
        service_id=service,
        service_name=service,
        spec=TaskSpec(command=["sleep", "60"]),
        desired_state=desired,
        status=TaskStatus(timestamp=T0, state=state),
    )


def scan(state: State, name: str, service: str) -> int:
    tasks = state.referrers(Task, "service", service)
    desired = [t for t in tasks if t.desired_state <= TaskState.RUNNING]
    if name == "desired":
        return len(desired)
    return sum(1 for t in desired if t.status.state == TaskState.RUNNING)


# One step: which task (by number), what becomes of it, and whether its transaction then fails.
STEP = st.tuples(
    st.integers(0, 5),
    st.sampled_from(SERVICES),
    st.sampled_from(DESIRED),
    st.sampled_from(STATES),
    st.booleans(),  # delete it instead
    st.booleans(),  # the transaction fails after this write (rolled back)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=4), max_size=12))
def test_tallies_equal_a_count_of_the_tasks(transactions: list[list[tuple]]) -> None:
    state = base_state()
    batch: list[list[Undo]] = []
    for steps in transactions:
        ops: list[Op] = []
        planned: dict[str, Task | None] = {}
        fails = False
        for number, service, desired, task_state, delete, fail in steps:
            id = f"t{number}"
            current = planned[id] if id in planned else state.get(Task, id)
            if current is None:
                if delete:
                    continue
                new = task(id, service, desired, task_state)
                ops.append(Create(new))
            elif delete:
                ops.append(Delete(current))
                new = None
            else:
                status = msgspec.structs.replace(current.status, state=task_state)
                new = msgspec.structs.replace(current, desired_state=desired, status=status)
                ops.append(Update(new))
            if new is not None:
                new = msgspec.structs.replace(new, version=state.revision + 1)
            planned[id] = new
            fails = fails or fail
        if fails:  # a second create of the node: refused after the writes, which are undone
            ops.append(Create(node("n1")))
        revision = state.revision + 1
        if not batch:  # the state readers see while the batch is written
            before = State()
            before.load(state.objects(), state.revision)
        try:
            events, undo = state.apply(ops, revision)
        except AlreadyExists:
            assert fails
        else:
            if events:  # rolled back and replayed, it is as apply left it
                state.rollback(undo)
                state.replay(events, revision)
                batch.append(undo)
                view = PreBatchView(state, batch, before.revision)
                questions = reads_of(state, before)
                assert answers(view, questions) == answers(before, questions)
                if len(batch) == 3:  # written: the next transaction starts a batch
                    batch = []
        for name in ("running", "desired"):
            for service in (*SERVICES, "missing"):
                assert state.tally(Task, name, service) == scan(state, name, service), (name, service)
    reloaded = State()
    reloaded.load(state.objects(), state.revision)
    assert reloaded._tallies == state._tallies
    assert all(counts for counts in state._tallies.values() for counts in counts.values())
