"""How the SQLite backend writes one batch of transactions: the last state of each object is its row,
the batch is one durable write, and rows go several to a statement."""

from __future__ import annotations

import asyncio
import sqlite3

from sqlite_helpers import commit, count_writes, rows
from store_helpers import WAIT, machine, replace, snapshot, take, watching

from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.store import sqlite as sqlite_backend


async def test_create_then_delete_in_one_batch_leaves_no_row(open_sqlite, db_path, monkeypatch):
    store = await open_sqlite()
    await commit(store, Create(machine("keep")))
    writes = count_writes(store, monkeypatch)
    base = store.revision
    created, deleted = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Create(machine("gone", "gone-host"))]),
            store.commit([Delete(replace(machine("gone", "gone-host"), version=base + 1))]),
        ),
        WAIT,
    )
    assert writes == [2], "both transactions should be one durable write"
    assert (created.revision, deleted.revision) == (base + 1, base + 2)
    assert store.view().get(Machine, "gone") is None
    await store.close()

    assert rows(db_path, "SELECT id FROM objects") == [("keep",)]
    reopened = await open_sqlite()
    assert reopened.view().get(Machine, "gone") is None
    assert reopened.view().lookup(Machine, "hostname", "gone-host") is None
    assert reopened.revision == base + 2
    async with watching(reopened, since=base) as changes:
        got = await take(changes, 2)
        assert [(c.revision, c.events[0].type) for c in got] == [(base + 1, "created"), (base + 2, "deleted")]


async def test_update_then_delete_then_recreate_in_one_batch(open_sqlite, monkeypatch):
    store = await open_sqlite()
    v1 = (await commit(store, Create(machine("m1", "one")))).objects[0]
    writes = count_writes(store, monkeypatch)
    rev = store.revision
    results = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Update(replace(v1, hostname="two"))]),
            store.commit([Delete(replace(v1, hostname="two", version=rev + 1))]),
            store.commit([Create(machine("m1", "three"))]),
        ),
        WAIT,
    )
    assert writes == [3]
    final = results[-1].objects[0]
    await store.close()
    reopened = await open_sqlite()
    assert reopened.view().get(Machine, "m1") == final
    assert reopened.view().lookup(Machine, "hostname", "three") == final


async def test_create_then_update_in_one_batch_is_one_row_with_the_update(open_sqlite, db_path):
    store = await open_sqlite()
    rev = store.revision
    _, updated = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Create(machine("m1", "one"))]),
            store.commit([Update(replace(machine("m1", "two"), version=rev + 1))]),
        ),
        WAIT,
    )
    await store.close()
    assert rows(db_path, "SELECT id FROM objects") == [("m1",)]
    reopened = await open_sqlite()
    assert reopened.view().get(Machine, "m1") == updated.objects[0]


async def test_an_update_of_a_row_missing_from_the_file_writes_it_whole(open_sqlite, db_path):
    """Updates change rows in place; if a row the state holds is missing (an edited file), the update
    must still land rather than change nothing."""
    store = await open_sqlite()
    v1 = (await commit(store, Create(machine("m1", "one")), Create(machine("m2", "other")))).objects[0]
    db = sqlite3.connect(db_path)
    db.execute("DELETE FROM objects WHERE id = 'm1'")
    db.commit()
    db.close()
    v2 = (await commit(store, Update(replace(v1, hostname="two")))).objects[0]
    await store.close()
    reopened = await open_sqlite()
    assert reopened.view().get(Machine, "m1") == v2
    assert reopened.view().lookup(Machine, "hostname", "other") is not None


async def test_concurrent_commits_are_grouped_into_few_writes(open_sqlite, monkeypatch):
    store = await open_sqlite()
    await commit(store, Create(machine("m0")))
    writes = count_writes(store, monkeypatch)
    results = await asyncio.wait_for(
        asyncio.gather(*(store.commit([Create(machine(f"m{i}"))]) for i in range(1, 101))), WAIT * 3
    )
    assert sum(writes) == 100
    assert len(writes) < 10, writes
    await store.close()
    reopened = await open_sqlite()
    assert reopened.revision == max(r.revision for r in results) == 101
    assert reopened.view().count(Machine) == 101


async def test_a_batch_larger_than_one_statement_is_written_whole(db_path, open_sqlite, monkeypatch):
    """Rows go to SQLite several per statement: with three a statement, a batch of creations, updates
    and deletions spans several statements of each kind and reads back exactly as committed."""
    monkeypatch.setattr(sqlite_backend, "_ROWS_PER_STATEMENT", 3)
    store = await open_sqlite()
    await commit(store, *(Create(machine(f"m{i}", f"web-{i}")) for i in range(10)))
    view = store.view()
    changed = [Update(replace(view.get(Machine, f"m{i}"), hostname=f"db-{i}")) for i in range(7)]
    removed = [Delete(view.get(Machine, f"m{i}")) for i in range(7, 10)]
    await asyncio.wait_for(
        asyncio.gather(
            store.commit(changed), store.commit(removed), store.commit([Create(machine("n", "new"))])
        ),
        WAIT,
    )
    before, revision = snapshot(store), store.revision
    await store.close()

    assert sorted(rows(db_path, "SELECT id FROM objects")) == sorted(
        [(f"m{i}",) for i in range(7)] + [("n",)]
    )
    reopened = await open_sqlite()
    assert snapshot(reopened) == before and reopened.revision == revision
    assert sorted(m.hostname for m in reopened.view().all(Machine)) == sorted(
        [f"db-{i}" for i in range(7)] + ["new"]
    )
    async with watching(reopened, since=0) as changes:
        assert sum(len(c.events) for c in await take(changes, revision)) == 10 + 7 + 3 + 1
