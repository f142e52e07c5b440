"""The agent channel: one long-lived WebSocket per agent carrying msgpack frames of `model.wire`
messages. The server side plugs into the manager's HTTP app at `/api/v1/agent`; the client side is
what an agent dials. Mutual TLS will wrap the same channel.

Interface (both ends):
    await channel.send(message)       # one message, one binary frame
    message = await channel.receive() # raises ChannelClosed when the peer or the network goes away
    await channel.close()

`ServerChannel` adapts a Litestar WebSocket and decodes `AgentMessage`s; `connect_agent(url)` dials
a manager with the `websockets` library and returns an `AgentChannel` that decodes `ManagerMessage`s.
Every failure of the connection (closed, broken, a malformed frame, a send that does not finish in
time) surfaces as `ChannelClosed`, and the channel is closed from then on. Sends are bounded in time
(the agent's end sets a timer only for a send that may have to wait for the peer);
receives wait for the peer (the dispatcher bounds them by its heartbeat deadlines, the agent by its
silence limit on the manager's answers). Neither end sends WebSocket pings: the heartbeats and their
acknowledgements already cross the channel every period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from treeherd.model.wire import AgentMessage, ManagerMessage
from treeherd.transport.credentials import (
    AUTH_HINT,
    TLS_HINT,
    CredentialError,
    authorization,
    bearer_token,
    tls_context,
)

if TYPE_CHECKING:
    from litestar.connection import WebSocket

__all__ = [
    "AGENT_PATH",
    "AgentChannel",
    "Channel",
    "ChannelClosed",
    "ManagerUnreachable",
    "ServerChannel",
    "agent_url",
    "connect_agent",
]

M = TypeVar("M")

AGENT_PATH = "/api/v1/agent"
SEND_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
# A full assignment set of a busy machine is the largest frame (about 1 kB per task).
MAX_FRAME_BYTES = 64 * 1024 * 1024
# The longest header of a client's frame (RFC 6455: 2 bytes, 8 of extended length, 4 of mask).
MAX_FRAME_HEADER = 14
# RFC 6455 close codes.
NORMAL_CLOSURE = 1000
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007

_encode = msgspec.msgpack.Encoder().encode
_agent_decoder: msgspec.msgpack.Decoder[AgentMessage] = msgspec.msgpack.Decoder(AgentMessage)
_manager_decoder: msgspec.msgpack.Decoder[ManagerMessage] = msgspec.msgpack.Decoder(ManagerMessage)


class ChannelClosed(Exception):
    """The other end closed the channel, or the connection broke."""


class ManagerUnreachable(ChannelClosed):
    """`connect_agent` could not open a channel to the manager; the message says why."""


class Channel(Protocol[M]):  # type: ignore[misc]
    async def send(self, message: object) -> None: ...

    async def receive(self) -> M: ...

    async def close(self) -> None: ...


class _Decoder(Protocol[M]):  # type: ignore[misc]
    def decode(self, data: bytes) -> M: ...


def _decode(decoder: _Decoder[M], data: bytes) -> M:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ChannelClosed(f"malformed message from the peer: {error}") from None


class ServerChannel:
    """The manager's end of one agent's WebSocket (a Litestar `WebSocket`)."""

    def __init__(self, socket: WebSocket[Any, Any, Any], *, send_timeout: float = SEND_TIMEOUT_S) -> None:
        self._socket = socket
        self._send_timeout = send_timeout
        self._closed = False

    @property
    def remote_address(self) -> str:
        client = self._socket.client
        return client.host if client is not None else ""

    @property
    def closed(self) -> bool:
        return self._closed

    async def accept(self) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._socket.accept()
        except Exception as error:
            self._closed = True
            raise ChannelClosed(f"the WebSocket handshake failed: {error}") from error

    async def send(self, message: object) -> None:
        if self._closed:
            raise ChannelClosed("the channel is closed")
        data = _encode(message)
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._socket.send_bytes(data)
        except TimeoutError:
            await self.close()
            raise ChannelClosed(f"the agent did not take a message within {self._send_timeout} s") from None
        except Exception as error:  # the ASGI server's errors for a gone peer vary by implementation
            self._closed = True
            raise ChannelClosed(f"the agent's connection broke: {error}") from error

    async def receive(self) -> AgentMessage:
        if self._closed:
            raise ChannelClosed("the channel is closed")
        try:
            event = await self._socket.receive()
        except Exception as error:
            self._closed = True
            raise ChannelClosed(f"the agent's connection broke: {error}") from error
        if event["type"] != "websocket.receive":
            self._closed = True
            raise ChannelClosed(f"the agent closed the channel (code {event.get('code', NORMAL_CLOSURE)})")
        data = event.get("bytes")
        if data is None:
            await self.close(UNSUPPORTED_DATA, "binary msgpack frames only")
            raise ChannelClosed("the agent sent a text frame; the channel carries binary msgpack frames")
        try:
            return _decode(_agent_decoder, data)
        except ChannelClosed:
            await self.close(INVALID_PAYLOAD, "malformed message")
            raise

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self._socket, "connection_state", None) == "disconnect":
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._socket.close(code, reason)


class AgentChannel:
    """The agent's end of its channel to a manager (a `websockets` client connection)."""

    def __init__(
        self, connection: ClientConnection, url: str, *, send_timeout: float = SEND_TIMEOUT_S
    ) -> None:
        self._connection = connection
        self.url = url
        self._send_timeout = send_timeout
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, message: object) -> None:
        if self._closed:
            raise ChannelClosed("the channel is closed")
        data = _encode(message)
        try:
            if self._sends_at_once(len(data)):
                await self._connection.send(data)
            else:
                async with asyncio.timeout(self._send_timeout):
                    await self._connection.send(data)
        except TimeoutError:
            # A close frame would queue behind all that the manager did not read: drop the connection.
            self._closed = True
            self._connection.transport.abort()
            raise ChannelClosed(
                f"the manager at {self.url} did not take a message within {self._send_timeout} s"
            ) from None
        except ConnectionClosed as error:
            self._closed = True
            raise ChannelClosed(f"the manager at {self.url} closed the channel ({error})") from None

    def _sends_at_once(self, size: int) -> bool:
        """Whether a frame of `size` bytes of payload goes to the connection's buffer without waiting:
        the buffer is at most at its low-water mark (so the connection is not paused for the peer) and
        stays below its high-water mark with the frame (so the write does not pause it: a plain
        transport pauses above the mark, a TLS one at it). Such a send needs no timer: an idle agent's
        heartbeats and most reports are sent so. A timer per send (a timeout object, a handle set in the
        loop's timer heap and taken out again) was, with the registrar's refresh timers, about 8 % of
        the CPU of 5,000 idle agents. A closing connection takes the timed path."""
        transport = self._connection.transport
        low, high = transport.get_write_buffer_limits()
        buffered = transport.get_write_buffer_size()
        return buffered <= low and buffered + size + MAX_FRAME_HEADER < high and not transport.is_closing()

    async def receive(self) -> ManagerMessage:
        if self._closed:
            raise ChannelClosed("the channel is closed")
        try:
            data = await self._connection.recv()
        except ConnectionClosed as error:
            self._closed = True
            raise ChannelClosed(f"the manager at {self.url} closed the channel ({error})") from None
        if isinstance(data, str):
            await self.close()
            raise ChannelClosed("the manager sent a text frame; the channel carries binary msgpack frames")
        try:
            return _decode(_manager_decoder, data)
        except ChannelClosed:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                await self._connection.close()


def agent_url(manager_url: str) -> str:
    """The WebSocket URL of a manager's agent channel: `http://H:P` -> `ws://H:P/api/v1/agent`
    (https -> wss; a ws/wss URL is taken as the channel's own URL if it already ends in the path)."""
    parsed = urllib.parse.urlsplit(manager_url if "://" in manager_url else f"http://{manager_url}")
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ManagerUnreachable(f"invalid manager URL {manager_url!r}: use http://HOST:PORT")
    path = parsed.path.rstrip("/")
    if not path.endswith(AGENT_PATH):
        path += AGENT_PATH
    return urllib.parse.urlunsplit((schemes[parsed.scheme], parsed.netloc, path, "", ""))


async def connect_agent(
    url: str,
    *,
    open_timeout_s: float = CONNECT_TIMEOUT_S,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> AgentChannel:
    """Open an agent channel to the manager at `url` (e.g. http://127.0.0.1:7400), within
    `open_timeout_s` seconds. Raises `ManagerUnreachable` saying what went wrong.

    Proxies from the environment are not used: agents talk to their managers directly. Frames are not
    compressed: most are tiny heartbeats, and managers serve many agents.
    """
    target = agent_url(url)
    try:
        headers = authorization(token if token is not None else bearer_token(url))
        tls = (tls or tls_context(url)) if target.startswith("wss://") else None
    except CredentialError as error:
        raise ManagerUnreachable(str(error)) from None
    try:
        connection = await connect(
            target,
            additional_headers=headers,
            ssl=tls,
            open_timeout=open_timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            proxy=None,
            ping_interval=None,  # liveness is the heartbeats' job (see the module's docstring)
        )
    except InvalidURI:
        raise ManagerUnreachable(f"invalid manager URL {url!r}: use http://HOST:PORT") from None
    except ssl.SSLCertVerificationError as error:
        raise ManagerUnreachable(f"{TLS_HINT} ({error.verify_message})") from None
    except InvalidStatus as error:
        status = error.response.status_code
        if headers and status in (401, 403):
            raise ManagerUnreachable(
                f"the manager at {url} refused this agent's credential (HTTP {status}): give the agent a token"
                f" with the agent role ({AUTH_HINT})"
            ) from None
        raise ManagerUnreachable(
            f"the server at {url} refused the agent channel (HTTP {status} for {target}): is it a treeherd"
            " manager of a compatible version?"
            + (" Does it require a token? (set TREEHERD_TOKEN_FILE)" if status in (401, 403) else "")
        ) from None
    except InvalidHandshake as error:
        raise ManagerUnreachable(f"the server at {url} did not open an agent channel: {error}") from None
    except TimeoutError:
        raise ManagerUnreachable(
            f"the treeherd manager at {url} did not answer within {open_timeout_s} s: is it overloaded, or is a"
            " firewall dropping the connection?"
        ) from None
    except OSError as error:
        raise ManagerUnreachable(
            f"cannot reach the treeherd manager at {url} ({error.strerror or error}): start it with"
            " 'treeherd up', or point the agent at a running one"
        ) from None
    return AgentChannel(connection, url)
