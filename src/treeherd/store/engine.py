"""The store engine shared by the embedded backends: group commit, event history and watches.

Commits queue up; one writer task takes everything queued, validates each transaction in order against
the state (each failing one is refused alone), writes the accepted ones to the backend's log in one
durable batch, and only then makes them visible: readers never see a write that is not yet durable.
Each transaction is applied once, checked; while the batch is written, `view()` answers as the state
was before it (`prebatch.PreBatchView`, from the batch's undo logs), and a failed write rolls it back.

The last `history` events are kept (in memory, and by durable backends on disk) so a watcher can resume
from a recent revision; older revisions answer `Compacted`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from treeherd.core.view import View
from treeherd.model.errors import Compacted, TreeherdError, Unavailable, WatchLagged
from treeherd.model.events import Change
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Op
from treeherd.store.base import Committed
from treeherd.store.prebatch import CommittedView, PreBatchView
from treeherd.store.state import State

DEFAULT_HISTORY = 100_000
DEFAULT_WATCH_BUFFER = 10_000
MAX_BATCH = 1_000


class Log(Protocol):
    """Where a backend makes changes durable."""

    async def load(self) -> tuple[int, list[AnyObject], list[Change]]:
        """The stored revision, every object, and every retained change (whole transactions)."""
        ...

    async def write(self, changes: list[Change], compacted_through: int) -> None:
        """Persist these changes (in revision order) in one durable transaction; history up to
        `compacted_through` is no longer needed and may be dropped."""
        ...

    async def close(self) -> None: ...


class _Pending:
    __slots__ = ("future", "ops")

    def __init__(self, ops: Sequence[Op], future: asyncio.Future[Committed]) -> None:
        self.ops = ops
        self.future = future


class EngineStore:
    """A `Store` over a `State`, with an optional durable `Log`."""

    def __init__(self, log: Log | None = None, *, history: int = DEFAULT_HISTORY) -> None:
        self._log = log
        self._history = history
        self._state = State()
        self._queue: deque[_Pending] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._changes: deque[Change] = deque()
        self._history_events = 0
        self._compacted_through = 0
        self._watches: set[_EngineWatch] = set()
        self._closed = False
        # The state, or while a batch is being made durable the state as it was before it.
        self._view = CommittedView(self._state)

    @property
    def revision(self) -> int:
        return self._view.revision

    def view(self) -> View:
        return self._view

    async def open(self) -> None:
        if self._log is None:
            return
        revision, objects, changes = await self._log.load()
        self._state.load(objects, revision)
        # The log keeps whole transactions back to at least our compaction point; trimming them here
        # with the same rule as during operation gives the same resumable history as before a restart.
        self._compacted_through = changes[0].revision - 1 if changes else revision
        for change in changes:
            self._remember(change)
        # The loaded lists can outlive this call (the finished future of the backend's thread may still
        # hold its result for a while): emptied, they keep neither a million objects' list nor the
        # history changes trimmed away above.
        objects.clear()
        changes.clear()

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            await asyncio.shield(self._writer)
        for watch in list(self._watches):
            watch.close()
        if self._log is not None:
            await self._log.close()

    async def commit(self, ops: Sequence[Op]) -> Committed:
        if self._closed:
            raise Unavailable("the store is closed")
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(ops, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="store-writer")
        # A cancelled caller does not cancel the batch its write belongs to.
        return await asyncio.shield(future)

    def history(self, since: int = 0) -> list[Change]:
        return [change for change in self._changes if change.revision > since]

    def watch(self, since: int | None = None) -> _EngineWatch:
        current = self.revision
        if since is None or since >= current:
            backlog: list[Change] = []
        else:
            if since < self._compacted_through:
                raise Compacted(
                    f"revision {since} is older than the retained history (oldest resumable revision is"
                    f" {self._compacted_through}): list the objects again and watch from the current revision",
                    oldest=self._compacted_through,
                )
            backlog = [change for change in self._changes if change.revision > since]
        watch = _EngineWatch(self, backlog)
        self._watches.add(watch)
        return watch

    # ---- the writer ----------------------------------------------------------------------------
    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._write_batch(batch)
        finally:
            self._writer = None

    async def _write_batch(self, batch: list[_Pending]) -> None:
        state = self._state
        accepted: list[tuple[_Pending, Sequence[Op]]] = []
        changes: list[Change] = []
        undos = []
        start_revision = state.revision
        for pending in batch:
            try:
                events, undo = state.apply(pending.ops, state.revision + 1)
            except TreeherdError as error:
                _settle(pending.future, error)
                continue
            except Exception as error:  # a bug in a plan must not wedge the writer
                _settle(pending.future, error)
                continue
            if not events:  # only asserts: nothing to write, no revision spent
                if not pending.future.done():
                    pending.future.set_result(Committed(revision=state.revision, objects=[]))
                continue
            accepted.append((pending, pending.ops))
            changes.append(Change(revision=state.revision, events=events))
            undos.append(undo)
        if not accepted:
            return
        if self._log is not None:
            self._view.show(PreBatchView(state, undos, start_revision))
            try:
                await self._log.write(changes, self._compacted_through)
            except BaseException as error:
                # Not durable (or, cancelled, not known to be): the batch never becomes visible.
                for undo in reversed(undos):
                    state.rollback(undo)
                state.revision = start_revision
                if not isinstance(error, Exception):
                    raise
                failure = Unavailable(f"the store could not write to disk ({error}); nothing was written")
                for pending, _ in accepted:
                    _settle(pending.future, failure)
                return
            finally:
                self._view.show(state)
        for (pending, _), change in zip(accepted, changes, strict=True):
            self._remember(change)
            self._publish(change)
            if not pending.future.done():
                pending.future.set_result(
                    Committed(revision=change.revision, objects=[event.object for event in change.events])
                )

    # ---- history and watches -------------------------------------------------------------------
    def _remember(self, change: Change) -> None:
        self._changes.append(change)
        self._history_events += len(change.events)
        while self._history_events > self._history and len(self._changes) > 1:
            dropped = self._changes.popleft()
            self._history_events -= len(dropped.events)
            self._compacted_through = dropped.revision

    def _publish(self, change: Change) -> None:
        for watch in list(self._watches):
            watch.push(change)

    def _forget(self, watch: _EngineWatch) -> None:
        self._watches.discard(watch)


def _settle(future: asyncio.Future[Committed], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _EngineWatch:
    """One watcher's queue: the backlog it asked for, then live changes."""

    def __init__(self, store: EngineStore, backlog: list[Change]) -> None:
        self._store = store
        self._queue: deque[Change] = deque(backlog)
        self._wakeup = asyncio.Event()
        self._closed = False
        self._lagged = False
        self._last = backlog[-1].revision if backlog else store.revision
        if backlog:
            self._wakeup.set()

    def push(self, change: Change) -> None:
        if self._closed:
            return
        if len(self._queue) >= DEFAULT_WATCH_BUFFER:
            self._lagged = True
            self._store._forget(self)
        else:
            self._queue.append(change)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._store._forget(self)
        self._wakeup.set()

    def __aiter__(self) -> _EngineWatch:
        return self

    async def __anext__(self) -> Change:
        """The next change. Cancelling a wait loses nothing: the queue lives on the watch."""
        while True:
            if self._queue:
                change = self._queue.popleft()
                self._last = change.revision
                return change
            if self._lagged:
                raise WatchLagged(
                    f"the watcher fell behind the live stream; resume from revision {self._last}",
                    last_revision=self._last,
                )
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
