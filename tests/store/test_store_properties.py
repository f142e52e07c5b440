"""The stateful properties of `test_state_properties.py`, run through a whole store of each backend.

The same random transactions and the same brute-force model, but each transaction goes through
`commit()`: the engine's group commit for memory and SQLite, etcd transactions and the watch-fed
working set for etcd. After every step the store's view must hold exactly the model's objects with
exact indexes; at the end a second store opened on the same data (a restart, or for etcd another
manager reading the prefix) must hold the same objects.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from store_helpers import WAIT
from test_state_properties import REFUSALS, StateMachine, snapshot

from conftest import fresh_prefix, new_store
from treeherd.model.ops import Op
from treeherd.store.base import Committed

_etcd: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _etcd_for_the_machine(request: pytest.FixtureRequest) -> None:
    """Hands the session's etcd to the state machines of this module (they cannot take fixtures)."""
    if "Etcd" in request.node.nodeid:
        _etcd["server"] = request.getfixturevalue("etcd_server")


class StoreMachine(StateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="treeherd-store-"))
        if self.backend == "etcd":
            self.where = _etcd["server"].url(fresh_prefix())
        else:
            self.where = str(self.directory / "treeherd.db")
        self.runner = asyncio.Runner()
        self.store = new_store(self.backend, self.where)
        self.runner.run(self.store.open())
        self.state = self.store._state  # the backend's State, indexes and all  # type: ignore[attr-defined]
        self.model.revision = self.store.revision

    async def _commit(self, ops: list[Op]) -> Committed:
        async with asyncio.timeout(WAIT):
            return await self.store.commit(ops)

    def run(self, ops: list[Op]) -> None:
        revision = self.store.revision + 1
        before = snapshot(self.state)
        expected, expected_events = self.model.apply(ops, revision)
        refused: Exception | None = None
        try:
            done = self.runner.run(self._commit(ops))
        except REFUSALS as error:
            refused = error
        if refused is not None:
            assert expected is not None, f"the store refused with {refused!r}; the model accepts {ops}"
            assert type(refused) in expected, (
                f"the store refused with {refused!r}; the model expects {expected}"
            )
            assert snapshot(self.state) == before, "a refused transaction changed the store"
            return
        assert expected is None, f"the store accepted {ops}; the model expects {expected}"
        assert done.objects == [obj for _, obj in expected_events]
        if expected_events:
            assert done.revision == revision

    def teardown(self) -> None:
        try:
            if self.backend != "memory":
                again = new_store(self.backend, self.where)
                self.runner.run(again.open())
                try:
                    assert snapshot(again._state)[1:] == snapshot(self.state)[1:]  # type: ignore[attr-defined]
                finally:
                    self.runner.run(again.close())
            self.runner.run(self.store.close())
        finally:
            self.runner.close()
            shutil.rmtree(self.directory, ignore_errors=True)


class MemoryMachine(StoreMachine):
    backend = "memory"


class SqliteMachine(StoreMachine):
    backend = "sqlite"


class EtcdMachine(StoreMachine):
    backend = "etcd"


SETTINGS = settings(max_examples=15, stateful_step_count=20, deadline=None)
MemoryMachine.TestCase.settings = SETTINGS
SqliteMachine.TestCase.settings = SETTINGS
EtcdMachine.TestCase.settings = SETTINGS
TestMemoryStore = MemoryMachine.TestCase
TestSqliteStore = SqliteMachine.TestCase
TestEtcdStore = EtcdMachine.TestCase
