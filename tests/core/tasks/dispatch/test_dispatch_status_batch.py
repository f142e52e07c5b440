"""Accepted statuses waiting for one write: who waits, a failed write put back, and the flush."""

from __future__ import annotations

import msgspec
from test_dispatch_support import S, status, task

from treeherd.core.tasks.dispatch.status import Verdict
from treeherd.core.tasks.dispatch.status_batch import StatusBatcher, plan_status_flush
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Service, Task, TaskSpec
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskStatusUpdate
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, machine, node


async def _world(store: MemoryStore, *tasks: Task) -> None:
    tree = node("svc-node", id="n1")
    service = Service(
        id="svc",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name="web",
        node_id="n1",
        task=TaskSpec(command=["x"]),
    )
    await store.commit(
        [Create(tree), Create(service), Create(machine("m1", id="m1")), Create(machine("m2", id="m2"))]
    )
    await store.commit([Create(t) for t in tasks])


def upd(task_id: str, state: TaskState) -> TaskStatusUpdate:
    return TaskStatusUpdate(task_id=task_id, status=status(state))


async def test_batcher_queues_forward_moves_and_says_who_waits(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"), task("t3", machine_id="m2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    view = store.view()
    outcome = batcher.offer(
        view,
        "m1",
        [upd("t1", S.RUNNING), upd("t2", S.ASSIGNED), upd("t3", S.RUNNING), upd("nope", S.RUNNING)],
        "r1",
    )
    assert outcome.waiting
    assert [v for _, v in outcome.verdicts] == [
        Verdict.ACCEPT,
        Verdict.MANAGER_STATE,
        Verdict.NOT_ON_NODE,
        Verdict.UNKNOWN_TASK,
    ]
    assert len(batcher) == 1
    # A retry of the same report waits for the same write; an older state is stale and answered at once.
    assert batcher.offer(view, "m1", [upd("t1", S.RUNNING)], "r1-retry").waiting
    stale = batcher.offer(view, "m1", [upd("t1", S.STARTING)], "r0")
    assert stale.verdicts == [("t1", Verdict.STALE)] and not stale.waiting
    # A newer state replaces the queued one.
    assert batcher.offer(view, "m1", [upd("t1", S.COMPLETE)], "r2").waiting
    assert batcher.queued("t1") == status(S.COMPLETE) and len(batcher) == 1

    batch = batcher.take()
    assert len(batcher) == 0 and batcher.queued("t1") == status(S.COMPLETE)
    # While the batch is in flight, a retry waits for it; something new starts the next batch.
    assert batcher.offer(view, "m1", [upd("t1", S.COMPLETE)], "r2-retry").waiting
    assert batcher.offer(view, "m1", [upd("t2", S.ACCEPTED)], "r3").waiting
    ops, dropped = plan_status_flush(store.view(), batch, FIXED_NOW)
    assert dropped == {} and len(ops) == 1
    await store.commit(ops)
    assert batcher.settle(True) == ["r1", "r1-retry", "r2", "r2-retry"]
    stored = store.view().get(Task, "t1")
    assert stored is not None and stored.status.state == S.COMPLETE
    assert list(batcher.take()) == ["t2"]
    assert batcher.settle(True) == ["r3"]


async def test_batcher_puts_a_failed_batch_back_behind_newer_states(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    view = store.view()
    batcher.offer(view, "m1", [upd("t1", S.STARTING), upd("t2", S.RUNNING)], "r1")
    batcher.take()
    batcher.offer(view, "m1", [upd("t1", S.RUNNING)], "r2")
    assert batcher.settle(False) == []
    assert batcher.queued("t1") == status(S.RUNNING) and batcher.queued("t2") == status(S.RUNNING)
    batch = batcher.take()
    assert set(batch) == {"t1", "t2"}
    assert batcher.settle(True) == ["r1", "r2"]


async def test_flush_drops_what_the_store_has_moved_past(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    batcher.offer(store.view(), "m1", [upd("t1", S.STARTING), upd("t2", S.RUNNING)], "r1")
    batch = batcher.take()
    # Meanwhile t1 got further (another write) and t2 was deleted.
    t1 = store.view().get(Task, "t1")
    t2 = store.view().get(Task, "t2")
    assert t1 is not None and t2 is not None
    await store.commit([Update(msgspec.structs.replace(t1, status=status(S.RUNNING)))])
    await store.commit([Delete(t2)])
    ops, dropped = plan_status_flush(store.view(), batch, FIXED_NOW)
    assert ops == [] and dropped == {"t1": Verdict.BACKWARD, "t2": Verdict.UNKNOWN_TASK}
