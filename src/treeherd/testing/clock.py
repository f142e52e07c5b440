"""A clock that moves only when told to, for components that take `now` or sleep on a clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

MAX_STOPS = 100_000  # bounds one advance() of a clock whose sleepers keep sleeping 0 s


class FakeClock:
    """`now()` returns the fake time; `await sleep(s)` waits until `advance()` moves past it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._now.timestamp()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + timedelta(seconds=seconds), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, stopping at each sleeper's due time in order (so a sleeper wakes at its
        time, not late), and let the woken tasks run after each stop."""
        target = self._now + timedelta(seconds=seconds)
        for _ in range(MAX_STOPS):
            due = [t for t, f in self._sleepers if t <= target and not f.done()]
            if not due:
                break
            self._now = max(self._now, min(due))
            woken = [(t, f) for t, f in self._sleepers if t <= self._now]
            self._sleepers = [(t, f) for t, f in self._sleepers if t > self._now]
            for _, future in woken:
                if not future.done():
                    future.set_result(None)
            for _ in range(5):  # let woken tasks run their next step
                await asyncio.sleep(0)
        self._now = target
        for _ in range(5):
            await asyncio.sleep(0)

    async def stall(self, seconds: float) -> None:
        """Move time forward at once and wake every due sleeper late, as an event loop that was
        blocked for `seconds` would."""
        self._now += timedelta(seconds=seconds)
        woken = [(t, f) for t, f in self._sleepers if t <= self._now]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._now]
        for _, future in woken:
            if not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
