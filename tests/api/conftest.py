"""Fixtures of the API tests: the real application over an in-memory store, through litestar's client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = MemoryStore()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def inventory(store: MemoryStore) -> Inventory:
    return Inventory(store, clock=lambda: FIXED_NOW, ids=Ids("id"))


@pytest.fixture
async def client(inventory: Inventory) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(inventory)) as opened:
        yield opened
