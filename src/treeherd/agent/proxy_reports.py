"""What happened to this host's local haproxy, sent to the manager (`ProxyEventReport`): events are
queued as they happen (never blocking the supervisor) and sent in order on the current session; while
there is none they wait, the oldest dropped beyond `MAX_QUEUED`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from treeherd.agent.session import Session
from treeherd.model.gateway import Figure
from treeherd.model.proxies import ProxyEventType
from treeherd.transport.channel import ChannelClosed

__all__ = ["ProxyReporter"]

log = logging.getLogger(__name__)
MAX_QUEUED = 100
RETRY_S = 0.5  # between tries while there is no session


class ProxyReporter:
    """Queues haproxy events and sends them to the manager; `post()` never blocks."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._queue: deque[tuple[ProxyEventType, str, dict[str, Figure]]] = deque(maxlen=MAX_QUEUED)
        self._wake = asyncio.Event()
        self._stopping = False

    def post(self, type: ProxyEventType, reason: str, figures: dict[str, Figure]) -> None:
        self._queue.append((type, reason, figures))
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stopping:
                type, reason, figures = self._queue[0]
                try:
                    await self._session.send_proxy_event(type, reason, figures)
                except (ChannelClosed, OSError) as error:
                    log.debug("haproxy event not sent yet: %s", error)
                    self._wake.clear()  # a new event or stop() ends the wait early
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RETRY_S):
                            await self._wake.wait()
                    continue
                self._queue.popleft()
