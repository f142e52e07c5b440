"""Task status reports into the store, batched: the dispatcher queues what each agent reports and writes
the queue in one transaction at `status_batch_max` items, or once `status_batch_interval_s` has passed
since the last write: a report that comes after a quiet interval is written at once (a task that just
failed is replaced without waiting out a batch), the reports of a busy moment at most one write per
interval. A report is acknowledged only once what it moved forward is committed (or it moved nothing forward),
so an agent retrying its unacknowledged reports loses nothing. Which updates count, and how they merge,
is decided in `core.tasks.dispatch`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from treeherd.core.tasks.dispatch import StatusBatcher, cluster_settings, plan_status_flush
from treeherd.manager.commits import Exhausted, Lost, commit_plan
from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.errors import TreeherdError
from treeherd.model.wire import StatusAck, StatusReport
from treeherd.store.base import Store

__all__ = ["StatusWriter"]

# The dispatcher's logger: its records keep the component's name whichever of its modules writes them.
log = logging.getLogger(__name__)

_Waiter = tuple[AgentSession, int]  # a report waiting for the write: its session and its id


class StatusWriter:
    """Queues agents' task status reports and writes them in batches, acknowledging each once written."""

    def __init__(
        self, store: Store, *, clock: Callable[[], datetime], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self.batcher: StatusBatcher[_Waiter] = StatusBatcher()  # the updates queued for the next write
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._last_write: datetime | None = None  # when the last write ended (None: not yet)

    def report(self, session: AgentSession, report: StatusReport) -> None:
        """Queue a report's updates, or acknowledge it at once if it has nothing to write."""
        outcome = self.batcher.offer(
            self._store.view(), session.machine_id, report.updates, (session, report.report_id)
        )
        for task_id, verdict in outcome.verdicts:
            if verdict.rejected:
                log.warning(
                    "agent %s: status of task %s rejected (%s)", session.hostname, task_id, verdict.value
                )
        if not outcome.waiting:
            session.post(StatusAck(report_id=report.report_id))
            return
        self._pending.set()
        if len(self.batcher) >= cluster_settings(self._store.view()).status_batch_max:
            self._full.set()

    async def wait_due(self) -> None:
        """Return when a batch is due: something is queued and the batch is full, or the batch interval
        has passed since the last write (at once after a quiet interval)."""
        await self._pending.wait()
        if self._last_write is None:
            return
        interval = cluster_settings(self._store.view()).status_batch_interval_s
        left = min(interval, interval - (self._clock() - self._last_write).total_seconds())
        if left > 0:
            await self._sleep_or(self._full, left)

    async def flush(self) -> None:
        """Write every queued status in one transaction, then acknowledge the reports waiting on it."""
        self._pending.clear()
        self._full.clear()
        batch = self.batcher.take()
        written = False
        try:
            committed = await commit_plan(
                self._store,
                lambda view: plan_status_flush(view, batch, self._clock())[0],
                what="dispatcher write (statuses)",
                on_not_found=Lost.RETRY,
                exhausted=Exhausted.GIVE_UP,
                logger=log,
            )
            written = committed is not None
        except TreeherdError as error:
            log.error("cannot write %d task status(es), will retry: %s", len(batch), error)
        finally:
            self._last_write = self._clock()
            waiters = self.batcher.settle(written)
            if len(self.batcher):
                self._pending.set()
        for session, report_id in waiters:
            session.post(StatusAck(report_id=report_id))

    async def _sleep_or(self, event: asyncio.Event, seconds: float) -> None:
        """Return when `event` is set or `seconds` passed on the dispatcher's clock."""
        if event.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)
