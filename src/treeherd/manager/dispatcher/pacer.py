"""Pacing of the dispatcher's sends: at most so many of them in one turn of the event loop.

After a chunk of placements, thousands of sessions have an increment at once: each session's stream
wakes, makes its message and posts it, and each writer wakes and sends it. Unpaced, they all wake in
the same turn of the loop, and that one turn runs every one of them (a second or more at 5,000 agents);
everything else on the loop (reading heartbeats and status reports, answering `/healthz`) waits a turn
of that length for each step it takes. Paced, a turn runs at most `per_turn` of them and the rest take
their turn in order, so the other work takes its steps in between. The work is the same; what changes
is how long anything else waits for the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["PER_TURN", "Pacer"]

PER_TURN = 64  # sends per turn of the loop: about 10 ms of the dispatcher's work, at ~150 us a send


class Pacer:
    """A budget of `per_turn` steps per turn of the event loop, shared by the tasks that await `turn()`
    before each step; waiting tasks go on in the order they came."""

    def __init__(self, per_turn: int = PER_TURN) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be at least 1, not {per_turn}")
        self._per_turn = per_turn
        self._left = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._refill_due = False

    async def turn(self) -> None:
        """Return when this step fits the budget of the loop's current turn: at once while it does,
        else in a later turn."""
        if self._left > 0 and not self._waiting:
            self._left -= 1
            self._schedule_refill()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_refill()
        await waiter  # a cancelled waiter is skipped by the refill and takes no step

    def _schedule_refill(self) -> None:
        # Runs in the loop's next turn: a new budget, taken first by the waiting tasks (which run in the
        # turn after it), and another refill as long as tasks still wait.
        if not self._refill_due:
            self._refill_due = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_due = False
        self._left = self._per_turn
        while self._left > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._left -= 1
        if self._waiting:
            self._schedule_refill()
