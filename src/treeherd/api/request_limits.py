"""Limits on what one HTTP request may cost the manager: the size of its head and body, and the time a
client may take to send them.

uvicorn bounds neither a request's head nor the time to send it, so a client sending one header byte a
second (slowloris), or a body that never ends, would hold a connection and its buffers for ever. This
is uvicorn's httptools protocol with those bounds:

- the request line and headers: at most `max_head_bytes` (431), sent within `head_timeout_s` of the
  connection opening or of the request's first byte (408, or just closed if nothing came);
- the body: at most `max_body_bytes`, refused from its Content-Length before it is read or as soon as a
  chunked body goes past it (413), and sent in full within `body_timeout_s` of the head (408).

Each refusal answers the API's JSON error shape and closes the connection. Streamed answers (events,
logs) and WebSockets are not limited in time: the limits end where the request has been read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}
_CODES = {408: "timeout", 413: "too_large", 431: "too_large"}


class RequestLimits:
    """The bounds of one request (see the module's docstring)."""

    def __init__(
        self,
        *,
        max_body_bytes: int = 4 * MIB,  # the application refuses more too (api.app.MAX_BODY_BYTES)
        max_head_bytes: int = 64 * 1024,
        head_timeout_s: float = 10.0,
        body_timeout_s: float = 60.0,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.head_timeout_s = head_timeout_s
        self.body_timeout_s = body_timeout_s


def limited_protocol(limits: RequestLimits) -> type[HttpToolsProtocol]:
    """uvicorn's `http` protocol class, bounded by `limits`."""
    return type("LimitedHttpProtocol", (_LimitedProtocol,), {"limits": limits})


class _LimitedProtocol(HttpToolsProtocol):
    limits: ClassVar[RequestLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0  # received while the head was incomplete
        self._parsed_head_bytes = 0  # of the request line's URL and the headers, as parsed
        self._body_bytes = 0
        self._refused = False
        self._cycle_made = False  # whether self.cycle is this request's (not the one before it)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still in the head after all of `data` was parsed: every byte of it belonged to the head.
        if self._in_head and not self._refused and self._head_bytes > self.limits.max_head_bytes:
            self._refuse(431, self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._parsed_head_bytes = 0
        self._body_bytes = 0
        self._cycle_made = False
        self._arm(self.limits.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._parsed_head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_head_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._parsed_head_bytes > self.limits.max_head_bytes:
            self._refuse(431, self._head_too_large())
            return
        length = next((value for name, value in self.headers if name == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._refuse(413, self._too_large())
            return
        super().on_headers_complete()
        self._cycle_made = True
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.limits.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            self._refuse(413, self._too_large())
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    def _head_too_large(self) -> str:
        return f"the request's headers exceed {self.limits.max_head_bytes} bytes"

    def _too_large(self) -> str:
        return f"the request's body exceeds {self.limits.max_body_bytes // MIB} MiB: send less at a time"

    def _too_slow(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._in_head and self._head_bytes == 0:
            self._refused = True
            self.transport.close()  # an idle connection: nothing to answer
            return
        part = "headers" if self._in_head else "body"
        limit = self.limits.head_timeout_s if self._in_head else self.limits.body_timeout_s
        self._refuse(408, f"the request's {part} did not arrive within {limit:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` (unless the application already answered) and close the connection."""
        self._refused = True
        self._disarm()
        where = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("refused a request from %s: %s (%d)", where, detail, status)
        cycle = self.cycle if self._cycle_made else None
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's reads end; its writes go nowhere
            cycle.message_event.set()
        if cycle is None or not cycle.response_started:
            body = json.dumps({"error": _CODES[status], "detail": detail}).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
            )
        self.transport.close()
