"""Helpers of the SQLite backend's tests: a bounded commit, the rows of the file, the durable writes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from store_helpers import WAIT

from treeherd.store.sqlite import SqliteStore


async def commit(store, *ops):
    return await asyncio.wait_for(store.commit(list(ops)), WAIT)


def rows(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def count_writes(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the store's durable writes: one entry (its number of changes) per write."""
    calls: list[int] = []
    original = store._log.write

    async def write(changes, history):
        calls.append(len(changes))
        await original(changes, history)

    monkeypatch.setattr(store._log, "write", write)
    return calls
