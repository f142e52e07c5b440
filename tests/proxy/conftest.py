"""A local haproxy per test in its own temp dir, on free loopback ports, stopped by pid afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from treeherd.proxy import LocalHaproxy
from treeherd.render.haproxy import LocalProxy, ProxyFrontend, ProxyServer, server_name
from treeherd.testing.backends import Backend


@pytest.fixture
async def local_haproxy(tmp_path: Path) -> AsyncIterator[LocalHaproxy]:
    proxy = LocalHaproxy(tmp_path / "haproxy")
    try:
        yield proxy
    finally:
        await proxy.stop()


def server_of(backend: Backend, weight: int = 1) -> ProxyServer:
    return ProxyServer(
        name=server_name("127.0.0.1", backend.port), address="127.0.0.1", port=backend.port, weight=weight
    )


def frontend(name: str, port: int, servers: list[Backend]) -> ProxyFrontend:
    return ProxyFrontend(name=name, port=port, servers=[server_of(b) for b in servers])


def one_frontend(port: int, servers: list[Backend], name: str = "dep") -> LocalProxy:
    return LocalProxy(frontends=[frontend(name, port, servers)])
