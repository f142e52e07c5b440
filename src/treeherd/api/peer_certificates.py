"""uvicorn's WebSocket and HTTP protocols, with a TLS client's certificate put in the ASGI scope.

uvicorn does not hand the peer certificate to the application, and the agent channel needs it: a
session is bound to the node id its certificate names. The certificate (already verified by the TLS
layer against the cluster CA) goes in `scope["extensions"]["treeherd.peer_certificate"]` as DER,
before the application sees the scope. Built on uvicorn's own protocol class, whichever its `auto`
choice is; the agent-channel tests over mutual TLS fail if a uvicorn release changes that hook. The
HTTP protocol does the same for each request, so a user certificate authenticates API requests; the
API tests over real TLS fail if that hook breaks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

from treeherd.api.auth import PEER_CERTIFICATE
from treeherd.transport.pki import issued_by_roots


def websocket_protocol(trusted_roots: Callable[[], bytes] | None = None) -> type[Any]:
    """The WebSocket protocol class to give uvicorn (`ws=`); with `trusted_roots`, a certificate not
    issued by one of them (a retired root's) is not handed on, so the connection has no identity."""
    base: Any = AutoWebSocketsProtocol
    if base is None or not hasattr(base, "run_asgi"):
        raise RuntimeError(
            "this uvicorn has no WebSocket protocol treeherd can read client certificates from"
        )

    class PeerCertificateProtocol(base):  # type: ignore[misc]
        async def run_asgi(self) -> None:
            ssl_object = self.transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der and trusted_roots is not None and not issued_by_roots(der, trusted_roots()):
                der = None
            if der:
                extensions = dict(self.scope.get("extensions") or {})
                extensions[PEER_CERTIFICATE] = der
                self.scope["extensions"] = extensions
            await super().run_asgi()

    return PeerCertificateProtocol


def _peer_der(transport: Any, trusted_roots: Callable[[], bytes] | None) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der and trusted_roots is not None and not issued_by_roots(der, trusted_roots()):
        return None
    return der or None


def http_peer_protocol(base: type[Any], trusted_roots: Callable[[], bytes] | None = None) -> type[Any]:
    """`base` (uvicorn's HTTP protocol class, httptools-based) putting the client certificate of the
    connection in every request's scope."""
    if not hasattr(base, "on_headers_complete"):
        raise RuntimeError(
            "this uvicorn HTTP protocol has no hook treeherd can read client certificates from"
        )

    class PeerCertificateHttpProtocol(base):  # type: ignore[misc]
        def on_headers_complete(self) -> None:
            der = _peer_der(getattr(self, "transport", None), trusted_roots)
            if der:
                extensions = dict(self.scope.get("extensions") or {})
                extensions[PEER_CERTIFICATE] = der
                self.scope["extensions"] = extensions
            super().on_headers_complete()

    return PeerCertificateHttpProtocol
