"""Fixtures of the store tests: every contract test runs against each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from treeherd.store.engine import EngineStore
from treeherd.store.memory import MemoryStore
from treeherd.store.sqlite import SqliteStore

BACKENDS = ["memory", "sqlite"]


def new_store(backend: str, tmp_path: Path, **kwargs: int) -> EngineStore:
    if backend == "memory":
        return MemoryStore(**kwargs)
    return SqliteStore(tmp_path / "treeherd.db", **kwargs)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineStore]:
    """An opened store of each backend, closed after the test."""
    opened = new_store(request.param, tmp_path)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[EngineStore]]]:
    """Opens a store of each backend with custom arguments (e.g. `history`); closes them after the test."""
    opened: list[EngineStore] = []

    async def make(**kwargs: int) -> EngineStore:
        created = new_store(request.param, tmp_path, **kwargs)
        await created.open()
        opened.append(created)
        return created

    yield make
    for created in reversed(opened):
        await created.close()
