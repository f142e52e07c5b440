"""Heartbeat deadline keeping for the dispatcher: when each node must be heard from next, the timer
that finds the late ones, and marking them down.

When the dispatcher starts, every node with an agent is marked "unknown" and given a doubled grace
period to reconnect. Each heartbeat (or registration) moves the node's deadline on; a node past its
deadline has its session closed and goes "down". Time the manager's own event loop was stalled does not
count against the nodes: the timer measures how late it woke and moves every deadline by as much.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from treeherd.core.tasks.dispatch import (
    Deadlines,
    cluster_settings,
    heartbeat_period,
    heartbeat_timeout,
    plan_agent_state,
    plan_mark_unknown,
)
from treeherd.core.view import View
from treeherd.manager.commits import Exhausted, Lost, commit_plan
from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.errors import TreeherdError
from treeherd.model.objects import Machine
from treeherd.model.ops import Op
from treeherd.store.base import Store

__all__ = ["HeartbeatDeadlines"]

# The dispatcher's logger: its records keep the component's name whichever of its modules writes them.
log = logging.getLogger(__name__)

TICK_S = 0.5  # the heartbeat timer's longest sleep: expiry is at most this late
# A heartbeat timer that wakes later than this past its time means the event loop was busy: the
# heartbeats that arrived meanwhile are not read yet, so the deadlines move by the lateness.
LATE_TICK_S = 0.25


class HeartbeatDeadlines:
    """The nodes the dispatcher expects to hear from, by when, and what happens to those it does not."""

    def __init__(
        self,
        store: Store,
        sessions: Mapping[str, AgentSession],
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rand: Callable[[], float],
    ) -> None:
        self._store = store
        self._sessions = sessions  # the dispatcher's live sessions, by machine: late ones are closed
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._deadlines = Deadlines()
        # Nodes not heard from since the dispatcher started (their down reason says so).
        self._unknown: set[str] = set()

    def __len__(self) -> int:
        return len(self._deadlines)

    def due(self, machine_id: str) -> float | None:
        """When the machine must be heard from (monotonic seconds), if it is tracked."""
        return self._deadlines.due(machine_id)

    def heard_from(self, machine_id: str, timeout_s: float) -> None:
        """The machine's agent registered or sent a heartbeat: it must be heard from again within
        `timeout_s`."""
        self._deadlines.register(machine_id, self._monotonic(), timeout_s)
        self._unknown.discard(machine_id)

    def forget(self, machine_id: str) -> None:
        """Stop tracking a machine (its registration was not written)."""
        self._deadlines.forget(machine_id)

    async def mark_unknown(self) -> None:
        """Mark every node with an agent "unknown" and give each a doubled grace period to reconnect."""
        now = self._clock()
        tracked: list[str] = []

        def plan(view: View) -> list[Op]:
            ops, ids = plan_mark_unknown(view, now)
            tracked[:] = ids
            return ops

        await commit_plan(
            self._store,
            plan,
            what="dispatcher write (mark nodes unknown)",
            on_not_found=Lost.RETRY,
            exhausted=Exhausted.GIVE_UP,
            logger=log,
        )
        settings = cluster_settings(self._store.view())
        started = self._monotonic()
        for machine_id in tracked:
            timeout = heartbeat_timeout(heartbeat_period(settings, self._rand()), settings, unknown=True)
            self._deadlines.register(machine_id, started, timeout)
            self._unknown.add(machine_id)

    async def tick(self) -> float:
        """Sleep until the next deadline (at most `TICK_S`), then mark the late nodes down; returns the
        monotonic time it woke at."""
        next_due = self._deadlines.next_due()
        wait = TICK_S if next_due is None else min(max(next_due - self._monotonic(), 0.0), TICK_S)
        asleep = self._monotonic()
        await self._sleep(wait)
        now = self._monotonic()
        lateness = now - asleep - wait
        if lateness > LATE_TICK_S:
            log.info("the dispatcher's timer ran %.2f s late: heartbeat deadlines move as much", lateness)
            self._deadlines.postpone(lateness)
        late = self._deadlines.expired(now)
        if late:
            await self._expire(late)
        return now

    async def _expire(self, late: list[str]) -> None:
        for machine_id in late:
            session = self._sessions.get(machine_id)
            if session is not None:
                session.close("no heartbeat within the grace period")
        never = [m for m in late if m in self._unknown]
        silent = [m for m in late if m not in self._unknown]
        self._unknown.difference_update(late)
        now = self._clock()

        def plan(view: View) -> list[Op]:
            # A node that registered again while this write was pending is alive: leave it be.
            return [
                *plan_agent_state(
                    view, [m for m in silent if m not in self._deadlines], "down", "heartbeat failure", now
                ),
                *plan_agent_state(
                    view,
                    [m for m in never if m not in self._deadlines],
                    "down",
                    "no heartbeat since the dispatcher started",
                    now,
                ),
            ]

        view = self._store.view()
        for machine_id in late:
            found = view.get(Machine, machine_id)
            log.info(
                "node %s missed its heartbeats: marking it down", found.hostname if found else machine_id
            )
        try:
            committed = await commit_plan(
                self._store,
                plan,
                what="dispatcher write (mark nodes down)",
                on_not_found=Lost.RETRY,
                exhausted=Exhausted.GIVE_UP,
                logger=log,
            )
            written = committed is not None
        except TreeherdError as error:
            log.error("cannot mark %d node(s) down: %s", len(late), error)
            written = False
        if not written:  # track them again so that the next tick tries once more
            retry_at = self._monotonic()
            for machine_id in late:
                if machine_id not in self._deadlines:
                    self._deadlines.register(machine_id, retry_at, TICK_S)
                    if machine_id in never:
                        self._unknown.add(machine_id)
