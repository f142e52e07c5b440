"""Fixtures of the API tests: the real application over an in-memory store, through litestar's client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory


@pytest.fixture
async def client(inventory: Inventory) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(inventory)) as opened:
        yield opened
