"""The dispatcher's pacer: at most so many steps per turn of the event loop, in the order they came,
and the other work on the loop goes on between them."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from treeherd.manager.dispatcher.pacer import Pacer


class TurnCounter:
    """Counts the turns of the event loop: a callback that schedules itself again each turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        self.turn += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)


async def test_no_more_steps_than_the_budget_run_in_one_turn_and_all_run_in_order() -> None:
    pacer = Pacer(per_turn=3)
    counter = TurnCounter()
    counter.start()
    ran: list[tuple[int, int]] = []  # (step, turn it ran in)

    async def step(n: int) -> None:
        await pacer.turn()
        ran.append((n, counter.turn))

    try:
        async with asyncio.timeout(5):
            await asyncio.gather(*(step(n) for n in range(20)))
    finally:
        counter.stop()
    assert [n for n, _ in ran] == list(range(20))
    by_turn: dict[int, int] = {}
    for _, turn in ran:
        by_turn[turn] = by_turn.get(turn, 0) + 1
    assert max(by_turn.values()) == 3
    assert len(by_turn) == 7  # 20 steps, 3 a turn


async def test_other_work_runs_between_the_paced_steps() -> None:
    pacer = Pacer(per_turn=10)
    counter = TurnCounter()
    counter.start()
    seen_by_other: list[int] = []  # how many steps had run each time the other task ran
    steps = 0

    async def step() -> None:
        nonlocal steps
        await pacer.turn()
        steps += 1

    async def other() -> None:
        while steps < 1_000:
            seen_by_other.append(steps)
            await asyncio.sleep(0)

    try:
        async with asyncio.timeout(5):
            await asyncio.gather(other(), *(step() for _ in range(1_000)))
    finally:
        counter.stop()
    # Unpaced, the thousand steps would all run in one turn, and the other task would see 0 then 1,000.
    assert len(seen_by_other) >= 50
    gaps = [b - a for a, b in itertools.pairwise(seen_by_other)]
    assert max(gaps) <= 10


async def test_a_cancelled_waiter_takes_no_step_and_holds_no_one_up() -> None:
    pacer = Pacer(per_turn=1)
    ran: list[str] = []

    async def step(name: str) -> None:
        await pacer.turn()
        ran.append(name)

    first = asyncio.create_task(step("first"))
    cancelled = asyncio.create_task(step("cancelled"))
    last = asyncio.create_task(step("last"))
    await asyncio.sleep(0)  # all three called turn(): the first took this turn's step
    cancelled.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(first, last)
    assert ran == ["first", "last"]
    assert cancelled.cancelled()


async def test_a_step_within_the_budget_does_not_wait_for_the_loop() -> None:
    pacer = Pacer(per_turn=2)
    counter = TurnCounter()
    counter.start()
    try:
        before = counter.turn
        await pacer.turn()
        await pacer.turn()
        assert counter.turn == before  # no turn of the loop went by
        await pacer.turn()  # the third waits for the next budget
        assert counter.turn > before
    finally:
        counter.stop()


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Pacer(per_turn=0)
