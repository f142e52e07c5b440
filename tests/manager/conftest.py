"""Fixtures of the manager's component tests: the dispatcher's harness (see `dispatcher_harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dispatcher_harness import Harness, RacingStore

from treeherd.store.memory import MemoryStore
from treeherd.testing.clock import FakeClock


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = RacingStore()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def harness(store: MemoryStore) -> AsyncIterator[Harness]:
    created = Harness(store, FakeClock())
    yield created
    await created.stop()
