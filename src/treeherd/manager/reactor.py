"""The loop every manager component runs: wait for store changes (or a timer), coalesce them over a
short debounce, then act.

SwarmKit's components debounce the same way (the scheduler commits at most every 50 ms, at least every
second under a steady stream). Here the debounce only starts once the component is busy: a change that
gives it work after it was idle for a debounce interval is acted on at once (a failed task is replaced,
its replacement allocated and placed, without three debounce delays in a row), and the changes that
follow within the interval are coalesced as before. A change that gives a component no work (its
`has_work` says so) does not wake it. A component reads the view and opens its watch without yielding
in between, so it starts from a consistent snapshot and misses nothing after it.

Changes that queued up while a component acted are taken without waiting (the watch has them), so
taking them never gave the loop back: after the scheduler placed a batch of 100,000 tasks, handling
the status changes that came meanwhile held the manager's loop for 5-6 s at 5,000 agents. A component
now lets the loop run after every `HANDLING_SLICE_S` spent in `handle`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime

from treeherd.model.errors import WatchLagged
from treeherd.model.events import Change
from treeherd.store.base import Store, Watch

log = logging.getLogger(__name__)

HANDLING_SLICE_S = 0.02  # time spent handling changes before the loop is let run


class Reactor:
    """Base of a store-driven component: subclasses implement `start(view)` and `handle(changes)`.

    `handle` returns nothing; `act()` is called after each debounced batch and when `wake_at` passes;
    `has_work()` (default: always) says whether the changes noted so far call for an act.
    """

    name = "reactor"

    def __init__(
        self,
        store: Store,
        *,
        debounce_s: float = 0.05,
        max_delay_s: float = 1.0,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.wake_at: datetime | None = None
        self._watch: Watch | None = None
        self._stopped = False
        self._last_act = -math.inf  # time.monotonic() when the last act ended
        self._handling_s = 0.0  # spent in `handle` since the loop last ran other work (or about)

    def start(self) -> None:
        """Read the initial state from `self.store.view()` (called right before the watch opens)."""

    def handle(self, change: Change) -> None:
        """Take note of one committed change."""

    async def act(self) -> None:
        """Do the work the noted changes call for."""

    def has_work(self) -> bool:
        """Whether the changes noted since the last act call for one (a component that can tell
        overrides this, so changes that do not concern it do not wake it)."""
        return True

    async def run(self) -> None:
        self.start()
        self._watch = self.store.watch()
        try:
            await self.act()
            while not self._stopped:
                got = await self._next_batch()
                if self._stopped:
                    return
                if got or self._due():
                    await self.act()
                    self._last_act = time.monotonic()
        finally:
            if self._watch is not None:
                self._watch.close()

    def stop(self) -> None:
        self._stopped = True
        if self._watch is not None:
            self._watch.close()

    def _due(self) -> bool:
        return self.wake_at is not None and self.wake_at <= self.clock()

    def _timeout(self) -> float | None:
        if self.wake_at is None:
            return None
        return max(0.0, (self.wake_at - self.clock()).total_seconds())

    async def _next(self, wait_s: float | None) -> bool:
        """Take one change into `handle`; False on timeout. Resumes a lagging watch from the log."""
        assert self._watch is not None
        try:
            async with asyncio.timeout(wait_s):
                change = await anext(self._watch)
        except TimeoutError:
            return False
        except StopAsyncIteration:
            self._stopped = True
            return False
        except WatchLagged as lagged:
            log.warning(
                "%s fell behind the store; resuming from revision %d", self.name, lagged.last_revision
            )
            self._watch.close()
            self._watch = self.store.watch(lagged.last_revision)
            return True
        started = time.perf_counter()
        self.handle(change)
        self._handling_s += time.perf_counter() - started
        if self._handling_s >= HANDLING_SLICE_S:
            self._handling_s = 0.0
            await asyncio.sleep(0)
        return True

    async def _next_batch(self) -> bool:
        """Wait for a change that gives work (or the wake time); act at once when idle for a debounce
        interval, else gather more changes for up to the debounce."""
        while True:
            if not await self._next(self._timeout()):
                return False
            if self._stopped or self.has_work():
                break
        if time.monotonic() - self._last_act >= self.debounce_s:
            return True
        deadline = time.monotonic() + self.max_delay_s
        quiet_until = time.monotonic() + self.debounce_s
        while not self._stopped:
            now = time.monotonic()
            remaining = min(quiet_until, deadline) - now
            if remaining <= 0:
                break
            if await self._next(remaining):
                quiet_until = time.monotonic() + self.debounce_s
            else:
                break
        return True
