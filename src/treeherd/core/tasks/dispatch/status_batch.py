"""Task statuses on their way to the store: the batch accepted statuses wait in, who waits for its
write, and the writes a batch turns into against the store's current state.

At most one batch is in flight while the next one fills; judging each status is `dispatch.status`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

import msgspec

from treeherd.core.tasks.dispatch.status import Verdict, check_status, moves_forward
from treeherd.core.view import View
from treeherd.model.ops import Op, Update
from treeherd.model.services import Task, TaskStatus
from treeherd.model.wire import TaskStatusUpdate

W = TypeVar("W")


class PendingStatus(NamedTuple):
    """A status waiting to be written, with the machine that reported it."""

    node_id: str
    status: TaskStatus


class ReportOutcome(NamedTuple):
    """Each update's verdict, and whether the report must wait for a write before it is acknowledged."""

    verdicts: list[tuple[str, Verdict]]
    waiting: bool


class StatusBatcher(Generic[W]):
    """Accepted statuses waiting to be written in one transaction, and who waits for that write.

    At most one batch is in flight (taken, being committed) while the next one fills. A report waits
    for the batch holding a state it reported; a report with nothing to write is answered at once.
    A failed write puts its batch back (behind any newer state queued meanwhile) with its waiters.
    """

    def __init__(self) -> None:
        self._pending: dict[str, PendingStatus] = {}
        self._waiters: list[W] = []
        self._inflight: dict[str, PendingStatus] = {}
        self._inflight_waiters: list[W] = []

    def __len__(self) -> int:
        """How many task statuses are queued (not counting the batch in flight)."""
        return len(self._pending)

    def queued(self, task_id: str) -> TaskStatus | None:
        """The furthest status not yet written for this task."""
        found = self._pending.get(task_id) or self._inflight.get(task_id)
        return found.status if found is not None else None

    def offer(
        self, view: View, node_id: str, updates: Sequence[TaskStatusUpdate], waiter: W
    ) -> ReportOutcome:
        """Judge a report from `node_id` and queue what it moves forward."""
        verdicts: list[tuple[str, Verdict]] = []
        on_pending = on_inflight = False
        for update in updates:
            queued = self.queued(update.task_id)
            verdict = check_status(view.get(Task, update.task_id), node_id, update.status, queued=queued)
            verdicts.append((update.task_id, verdict))
            if verdict is Verdict.ACCEPT:
                self._pending[update.task_id] = PendingStatus(node_id, update.status)
                on_pending = True
            elif verdict is Verdict.QUEUED:
                if update.task_id in self._pending:
                    on_pending = True
                else:
                    on_inflight = True
        if on_pending:
            self._waiters.append(waiter)
        elif on_inflight:
            self._inflight_waiters.append(waiter)
        return ReportOutcome(verdicts, on_pending or on_inflight)

    def take(self) -> dict[str, PendingStatus]:
        """Start writing everything queued; `settle` must follow before the next `take`."""
        if self._inflight:
            raise RuntimeError("a status batch is already in flight")
        self._inflight, self._pending = self._pending, {}
        self._inflight_waiters, self._waiters = self._waiters, []
        return dict(self._inflight)

    def settle(self, written: bool) -> list[W]:
        """End the write of the batch in flight; returns the waiters to answer (none if it failed)."""
        batch, waiters = self._inflight, self._inflight_waiters
        self._inflight, self._inflight_waiters = {}, []
        if written:
            return waiters
        for task_id, pending in batch.items():
            newer = self._pending.get(task_id)
            if newer is None or moves_forward(pending.status, newer.status):
                self._pending[task_id] = pending
        self._waiters = waiters + self._waiters
        return []


def plan_status_flush(
    view: View, batch: Mapping[str, PendingStatus], now: datetime
) -> tuple[list[Op], dict[str, Verdict]]:
    """The writes for a batch against the current state (a task may have moved meanwhile): one
    Update per task whose status still moves forward, and the verdicts of those dropped."""
    ops: list[Op] = []
    dropped: dict[str, Verdict] = {}
    for task_id, pending in batch.items():
        task = view.get(Task, task_id)
        verdict = check_status(task, pending.node_id, pending.status)
        if verdict is Verdict.ACCEPT:
            assert task is not None
            ops.append(Update(msgspec.structs.replace(task, status=pending.status, updated_at=now)))
        else:
            dropped[task_id] = verdict
    return ops, dropped
