"""The agent channel: one long-lived WebSocket per agent carrying msgpack frames of `model.wire`
messages. The server side plugs into the manager's HTTP app at `/api/v1/agent`; the client side is
what an agent dials. Mutual TLS will wrap the same channel.

Interface (both ends):
    await channel.send(message)       # one message, one binary frame
    message = await channel.receive() # raises ChannelClosed when the peer or the network goes away
    await channel.close()
"""

from __future__ import annotations

from typing import Protocol, TypeVar

M = TypeVar("M")

AGENT_PATH = "/api/v1/agent"


class ChannelClosed(Exception):
    """The other end closed the channel, or the connection broke."""


class Channel(Protocol[M]):  # type: ignore[misc]
    async def send(self, message: object) -> None: ...

    async def receive(self) -> M: ...

    async def close(self) -> None: ...
