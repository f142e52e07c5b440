"""Agents' reports about their local haproxy into the host's proxy record (`core.edge.proxy_records`):
one write per report, in the order a session sent them, without holding up the session's reader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from treeherd.core.edge.proxy_records import plan_proxy_event
from treeherd.core.view import View
from treeherd.manager.commits import Exhausted, Lost, commit_plan
from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.errors import TreeherdError
from treeherd.model.ops import Op
from treeherd.model.wire import ProxyEventReport
from treeherd.store.base import Store

__all__ = ["ProxyEvents"]

log = logging.getLogger(__name__)
MAX_QUEUED = 100  # per session: an agent that floods reports loses the oldest, not the manager's memory


class ProxyEvents:
    """Writes each session's proxy reports one at a time, in order."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime], ids: Callable[[], str]) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids
        self._queues: dict[str, list[ProxyEventReport]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    def report(self, session: AgentSession, message: ProxyEventReport) -> None:
        log.info("agent %s: haproxy %s: %s", session.hostname, message.event, message.reason)
        queue = self._queues.setdefault(session.id, [])
        queue.append(message)
        del queue[:-MAX_QUEUED]
        writer = self._writers.get(session.id)
        if writer is None or writer.done():
            self._writers[session.id] = asyncio.create_task(self._write(session))

    async def _write(self, session: AgentSession) -> None:
        queue = self._queues.get(session.id, [])
        try:
            while queue:
                await self._record(session, queue.pop(0))
        finally:
            if not queue:
                self._queues.pop(session.id, None)
                self._writers.pop(session.id, None)

    async def _record(self, session: AgentSession, message: ProxyEventReport) -> None:
        now = self._clock()

        def plan(view: View) -> list[Op]:
            return plan_proxy_event(
                view,
                hostname=session.hostname,
                machine_id=session.machine_id,
                type=message.event,
                reason=message.reason,
                figures=message.figures,
                now=now,
                new_id=self._ids,
            )

        try:
            await commit_plan(
                self._store,
                plan,
                what=f"haproxy event of agent {session.hostname}",
                on_already_exists=Lost.RETRY,
                exhausted=Exhausted.GIVE_UP,
                logger=log,
            )
        except TreeherdError as error:
            log.warning("haproxy event of agent %s not recorded: %s", session.hostname, error)
