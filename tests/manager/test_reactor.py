"""manager.reactor on the in-memory store: changes that queued up while a component acted are handled
with the event loop let run in between, not all in one turn of it."""

from __future__ import annotations

import asyncio
import time

from treeherd.manager import reactor
from treeherd.manager.reactor import Reactor
from treeherd.model.events import Change
from treeherd.model.ops import Create
from treeherd.runtime import utc_now
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import machine

CHANGES = 20
HANDLING_S = 0.005  # each change's handling, spun (a component's CPU-bound work)


class Slow(Reactor):
    """Holds its first act until `gate` opens; each change then takes `HANDLING_S` of CPU to handle."""

    name = "slow"

    def __init__(self, store: MemoryStore, ticks: list[int]) -> None:
        super().__init__(store, clock=utc_now)
        self.gate = asyncio.Event()
        self.acting = asyncio.Event()  # the first act began: the watch is open
        self.all_seen = asyncio.Event()
        self.ticks = ticks
        self.seen: list[int] = []  # the loop's tick count when each change was handled
        self.acts = 0

    async def act(self) -> None:
        self.acts += 1
        if self.acts == 1:
            self.acting.set()
            await self.gate.wait()

    def handle(self, change: Change) -> None:
        self.seen.append(self.ticks[0])
        if len(self.seen) == CHANGES:
            self.all_seen.set()
        spin_until = time.perf_counter() + HANDLING_S
        while time.perf_counter() < spin_until:
            pass


async def test_a_backlog_of_changes_lets_the_loop_run_between_slices() -> None:
    store = MemoryStore()
    await store.open()
    ticks = [0]
    component = Slow(store, ticks)
    running = asyncio.create_task(component.run())
    done = False

    async def ticker() -> None:
        while not done:
            ticks[0] += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.wait_for(component.acting.wait(), 5)
        for index in range(CHANGES):  # queued while the component acts
            await store.commit([Create(machine(f"host-{index}"))])
        component.gate.set()
        await asyncio.wait_for(component.all_seen.wait(), 5)
    finally:
        done = True
        component.stop()
        await asyncio.wait_for(asyncio.gather(running, ticking), 5)
        await store.close()
    # Every slice of handling is followed by a turn of the loop: the ticker moved within the backlog,
    # at least once for each slice's worth of changes.
    slices = CHANGES * HANDLING_S / reactor.HANDLING_SLICE_S
    moves = sum(
        1 for before, after in zip(component.seen, component.seen[1:], strict=False) if after > before
    )
    assert moves >= slices - 1
