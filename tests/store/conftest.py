"""Fixtures of the store tests: every contract test runs against each backend, etcd included (one real
etcd for the session, each test under a prefix of its own)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from store_helpers import opening

from treeherd.store.engine import EngineStore
from treeherd.store.etcd import EtcdStore
from treeherd.store.memory import MemoryStore
from treeherd.store.sqlite import SqliteStore
from treeherd.testing.etcd import EtcdProcess

BACKENDS = ["memory", "sqlite", "etcd"]
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One real etcd on free loopback ports for the session, stopped by pid."""
    with EtcdProcess(tmp_path_factory.mktemp("etcd")) as server:
        yield server


def fresh_prefix() -> str:
    """A key prefix no other test of this session uses."""
    return f"/test-{next(_prefixes)}"


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Where a test's store of each backend lives (the same place for every store the test opens)."""
    prefix = fresh_prefix()

    def url(backend: str) -> str:
        if backend == "etcd":
            return request.getfixturevalue("etcd_server").url(prefix)
        return str(tmp_path / "treeherd.db")

    return url


def new_store(backend: str, where: str, **kwargs: int) -> EngineStore:
    if backend == "memory":
        return MemoryStore(**kwargs)
    if backend == "etcd":
        return EtcdStore(where, **kwargs)
    return SqliteStore(Path(where), **kwargs)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, backend_url: Callable[[str], str]
) -> AsyncIterator[EngineStore]:
    """An opened store of each backend, closed after the test."""
    opened = new_store(request.param, backend_url(request.param))
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, backend_url: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[EngineStore]]]:
    """Opens a store of each backend with custom arguments (e.g. `history`); closes them after the test."""
    async with opening(
        lambda **kwargs: new_store(request.param, backend_url(request.param), **kwargs)
    ) as make:
        yield make


# ---- the SQLite backend's own tests ------------------------------------------------------------------
Opener = Callable[..., Awaitable[SqliteStore]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "treeherd.db"


@pytest.fixture
async def open_sqlite(db_path: Path) -> AsyncIterator[Opener]:
    """Opens SqliteStores on one file (one at a time: close before reopening); closes them all at the end."""
    async with opening(lambda **kwargs: SqliteStore(db_path, **kwargs)) as open_:
        yield open_
