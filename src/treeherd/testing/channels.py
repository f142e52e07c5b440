"""An in-memory agent channel pair: what one end sends, the other receives, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from treeherd.transport.channel import ChannelClosed

_CLOSED = object()


class MemoryChannel:
    """One end of a pair made by `channel_pair()`."""

    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self.closed = False
        self.sent: list[Any] = []

    async def send(self, message: object) -> None:
        if self.closed:
            raise ChannelClosed("this end is closed")
        self.sent.append(message)
        await self._outbox.put(message)

    async def receive(self) -> Any:
        if self.closed:
            raise ChannelClosed("this end is closed")
        message = await self._inbox.get()
        if message is _CLOSED:
            self.closed = True
            raise ChannelClosed("the other end closed the channel")
        return message

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._outbox.put(_CLOSED)
            await self._inbox.put(_CLOSED)


def channel_pair() -> tuple[MemoryChannel, MemoryChannel]:
    """(agent end, manager end)."""
    to_manager: asyncio.Queue[Any] = asyncio.Queue()
    to_agent: asyncio.Queue[Any] = asyncio.Queue()
    return MemoryChannel(to_agent, to_manager), MemoryChannel(to_manager, to_agent)
