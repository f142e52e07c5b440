"""uvicorn's HTTP protocol with the writes of one turn of the event loop sent as one.

uvicorn writes a response's head and its body separately, so each small answer cost two TLS records
and two send calls, and the client two reads to decrypt. Writes made in one turn of the loop are
joined and handed to the transport at the end of that turn: a small answer is one record and one
system call. Over TLS this took about half of what TLS added to a keep-alive request (see
`benchmarks/tls_overhead.py`); plain connections gain a system call per answer too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class JoinedWrites:
    """A transport whose writes wait for the end of the loop's turn, then go out together. Everything
    else is the wrapped transport's; closing it first sends what is waiting."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw = transport  # the wrapped transport
        self._loop = loop
        self._waiting: list[bytes] = []
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or not data:
            return
        if not self._waiting:
            self._loop.call_soon(self.flush)
        self._waiting.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._waiting:
            return
        data = self._waiting[0] if len(self._waiting) == 1 else b"".join(self._waiting)
        self._waiting.clear()
        if not self.raw.is_closing():
            self.raw.write(data)

    def write_eof(self) -> None:
        self.flush()
        self.raw.write_eof()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self.raw.close()

    def abort(self) -> None:
        self._waiting.clear()
        self._closed = True
        self.raw.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def http_protocol(base: Any = AutoHTTPProtocol) -> type[Any]:
    """The HTTP protocol class to give uvicorn (`http=`): `base` (by default uvicorn's own choice),
    over JoinedWrites."""

    class JoinedWritesProtocol(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(JoinedWrites(transport, asyncio.get_running_loop()))

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # A WebSocket frame is one write already; joining would only delay each message by a
            # turn (measured: agent round trips a few per cent slower), so the channel gets the
            # plain transport.
            joined: Any = getattr(self, "transport")  # noqa: B009 - the base class is not typed
            setattr(self, "transport", joined.raw)  # noqa: B010
            try:
                super().handle_websocket_upgrade(*args)
            finally:
                setattr(self, "transport", joined)  # noqa: B010

    return JoinedWritesProtocol
