"""The manager's TLS listener: the event loop's own TLS protocol, set up for each connection here rather
than by the server library, so that a client certificate refused during the handshake (from another CA,
expired, not yet valid) is recorded in the audit log with the client's address. Such a connection ends
before any HTTP is spoken: no route or guard ever sees it, and the client is told by TLS's own alert.

`tls_protocol_class(http_class, context, refusals)` stands in for uvicorn's HTTP protocol class: for each
accepted connection it makes uvicorn's protocol and the loop's TLS protocol in front of it (uvloop's on
a uvloop loop, asyncio's otherwise), while the server listens without TLS of its own. uvicorn's
protocols see the TLS transport exactly as with its own set-up (scheme https, the peer certificate, a
WebSocket upgrade on the same transport).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from typing import Any

from treeherd.api.auth import RefusalSink

HANDSHAKE_TIMEOUT_S = 60.0  # as asyncio's and uvloop's own default
_classes: dict[type[Any], type[Any]] = {}


def tls_protocol_class(http_class: type[Any], context: ssl.SSLContext, refusals: RefusalSink) -> Any:
    """What to give uvicorn as its HTTP protocol class: called like one, it returns the TLS protocol
    that carries an instance of `http_class`."""

    def make(**kwargs: Any) -> asyncio.BaseProtocol:
        app = http_class(**kwargs)
        loop = kwargs.get("_loop") or asyncio.get_running_loop()
        waiter = loop.create_future()
        tls = _tls_class(loop)(
            loop, app, context, waiter, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
        )
        waiter.add_done_callback(lambda done: _handshake_done(done, tls, refusals))
        protocol: asyncio.BaseProtocol = tls
        return protocol

    return make


def _handshake_done(done: asyncio.Future[Any], tls: Any, refusals: RefusalSink) -> None:
    error = None if done.cancelled() else done.exception()
    if not isinstance(error, ssl.SSLCertVerificationError):
        return  # a handshake that succeeded, or that the client gave up (its own trust, a scanner)
    peer = getattr(tls, "peer", None)
    address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
    reason = error.verify_message or "not verified"
    refusals(address=address, what="TLS handshake", reason=f"client certificate refused: {reason}")


def _tls_class(loop: asyncio.AbstractEventLoop) -> type[Any]:
    """The loop's own TLS protocol, noting the peer's address when the connection is made."""
    base: type[Any] = asyncio.sslproto.SSLProtocol
    try:
        import uvloop
        import uvloop.loop

        if isinstance(loop, uvloop.Loop):
            base = uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    except ImportError:  # uvloop is optional: asyncio's TLS protocol then
        pass
    known = _classes.get(base)
    if known is None:

        class PeerNotingTlsProtocol(base):  # type: ignore[misc]
            peer: Any = None

            def connection_made(self, transport: Any) -> None:
                self.peer = transport.get_extra_info("peername")
                super().connection_made(transport)

        known = _classes[base] = PeerNotingTlsProtocol
    return known
