"""Durability of the SQLite backend: what a commit returns survives a restart; a failed write leaves nothing.

How the writes of one batch land in the file: `test_sqlite_batches.py`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator

import pytest
from sqlite_helpers import commit, rows
from store_helpers import (
    WAIT,
    binding,
    domain,
    endpoint,
    machine,
    node,
    provision,
    replace,
    route,
    snapshot,
    take,
    watching,
)

from treeherd.model.discovery import Endpoint
from treeherd.model.errors import AlreadyExists, Compacted, Unavailable
from treeherd.model.events import Change
from treeherd.model.objects import Domain, Machine
from treeherd.model.ops import Assert, Create, Delete, Update
from treeherd.store import sqlite as sqlite_backend
from treeherd.store.sqlite import SqliteStore


async def test_reopen_shows_same_objects_versions_and_revision(open_sqlite):
    store = await open_sqlite()
    first = await commit(
        store,
        Create(domain("d1")),
        Create(node("root")),
        Create(node("web", "root.web", parent="root", domain_uris=[route("d1", "/")], labels={"k": "v"})),
        Create(machine("m1", ips=["10.0.0.1"], cpus=2.5, memory_bytes=1 << 30)),
        Create(machine("m2")),
        Create(binding("b1", "m1", "web", weight=3)),
        Create(provision("p1", "new-host", "root")),
    )
    objs = {o.id: o for o in first.objects}
    await commit(store, Update(replace(objs["web"], puppet_classes={"nginx": {"workers": 4, "tls": True}})))
    await commit(store, Delete(objs["m2"]))
    before = snapshot(store)
    await store.close()

    reopened = await open_sqlite()
    assert snapshot(reopened) == before
    assert reopened.revision == 3
    view = reopened.view()
    assert view.get(Machine, "m2") is None
    assert view.lookup(Machine, "hostname", "m1.example").version == 1
    assert [b.id for b in view.referrers(type(objs["b1"]), "node", "web")] == ["b1"]
    # the indexes are rebuilt too: integrity checks still hold after a reopen
    with pytest.raises(AlreadyExists):
        await commit(reopened, Create(machine("m9", "m1.example")))
    done = await commit(reopened, Create(machine("m3")))
    assert done.revision == 4


def endpoint_index(view) -> dict[tuple[str, str], list[str]]:
    """The ids filed under the keys the endpoint tests use, per (index, key)."""
    keys = [("service", "api"), ("service", "db"), ("machine", "m1"), ("machine", "m2")]
    return {(index, key): sorted(e.id for e in view.where(Endpoint, index, key)) for index, key in keys}


async def test_reopen_rebuilds_the_non_unique_indexes(open_sqlite):
    store = await open_sqlite()
    first = await commit(
        store,
        Create(endpoint("e1", "api", 1, machine_id="m1")),
        Create(endpoint("e2", "api", 2)),
        Create(endpoint("e3", "db", 3, machine_id="m1")),
    )
    objs = {o.id: o for o in first.objects}
    await commit(store, Update(replace(objs["e1"], service="db", machine_id="m2")))
    await commit(store, Delete(objs["e3"]))
    before = endpoint_index(store.view())
    assert before == {
        ("service", "api"): ["e2"],
        ("service", "db"): ["e1"],
        ("machine", "m1"): [],
        ("machine", "m2"): ["e1"],
    }
    await store.close()

    reopened = await open_sqlite()
    view = reopened.view()
    assert endpoint_index(view) == before
    assert view.where(Endpoint, "machine", "m2") == [view.get(Endpoint, "e1")]
    await commit(reopened, Delete(view.get(Endpoint, "e1")))  # and kept in step after the reopen
    assert view.where(Endpoint, "service", "db") == []
    assert view.where(Endpoint, "machine", "m2") == []


async def test_reopen_of_a_fresh_file_is_empty(open_sqlite, db_path):
    store = await open_sqlite()
    await store.close()
    reopened = await open_sqlite()
    assert reopened.revision == 0
    assert snapshot(reopened) == (0, {})
    assert db_path.exists()


async def test_watch_resumes_across_a_reopen(open_sqlite):
    store = await open_sqlite()
    async with watching(store) as live:
        revs = [
            (await commit(store, Create(machine(f"m{i}")), Create(node(f"n{i}")))).revision for i in range(4)
        ]
        seen: list[Change] = await take(live, 4)
    await store.close()

    reopened = await open_sqlite()
    async with watching(reopened, since=revs[1]) as changes:
        replay = await take(changes, 2)
        assert replay == seen[2:]  # the same changes, events and objects as before the restart
        after = await commit(reopened, Create(machine("m9")))
        (change,) = await take(changes, 1)
        assert change.revision == after.revision == revs[-1] + 1


async def test_compaction_point_survives_a_reopen(open_sqlite):
    store = await open_sqlite(history=2)
    for i in range(4):
        await commit(store, Create(machine(f"m{i}")))
    with pytest.raises(Compacted):
        store.watch(since=1)
    await store.close()

    reopened = await open_sqlite(history=2)
    with pytest.raises(Compacted):
        reopened.watch(since=1)
    async with watching(reopened, since=2) as changes:
        assert [c.revision for c in await take(changes, 2)] == [3, 4]


async def test_resume_after_reopen_never_replays_part_of_a_transaction(open_sqlite):
    """Retained history is counted in events, but a transaction must be replayed whole or not at all."""
    store = await open_sqlite(history=3)
    await commit(store, Create(machine("a")), Create(machine("b")))  # revision 1: 2 events
    await commit(store, Create(machine("c")), Create(machine("d")))  # revision 2: 2 events
    with pytest.raises(Compacted):  # before the restart, revision 1 is dropped whole
        store.watch(since=0)
    await store.close()

    reopened = await open_sqlite(history=3)
    try:
        async with watching(reopened, since=0) as changes:
            (first,) = await take(changes, 1)
    except Compacted:
        return  # the correct outcome: revision 1 is no longer (fully) retained
    ids = [e.object.id for e in first.events]
    assert first.revision != 1 or ids == ["a", "b"], (
        f"after a reopen, watch(since=0) replays revision 1 with events {ids} instead of ['a', 'b'] (or"
        " Compacted, as before the restart): SqliteLog._load must not keep a transaction that its LIMIT on"
        " history events (or pruning) cut short"
    )


async def replay(store: SqliteStore, since: int) -> object:
    """What `watch(since)` answers: Compacted(oldest), or the replayed (revision, [(type, id)]) list."""
    try:
        watch = store.watch(since)
    except Compacted as error:
        return ("compacted", error.oldest)
    got: list[tuple[int, list[tuple[str, str]]]] = []
    iterator = aiter(watch)
    try:
        while since < store.revision and (not got or got[-1][0] < store.revision):
            change = await asyncio.wait_for(anext(iterator), 0.2)
            got.append((change.revision, [(e.type, e.object.id) for e in change.events]))
    except TimeoutError:
        pass  # the replay stopped short of the current revision
    finally:
        watch.close()
    return got


ASSERT_ONLY_BUG = (
    "a transaction of only Assert ops writes nothing and must spend no revision; otherwise its revision"
    " is kept in memory but has no event rows on disk, and vanishes from the replay after a reopen"
)
OVERSIZED_BUG = (
    "the engine keeps the newest transaction even when it has more events than `history`; the log must"
    " keep it whole too, or after a reopen the same `since` answers Compacted"
)


@pytest.mark.parametrize(
    ("history", "txns", "prune_every", "diagnosis"),
    [
        pytest.param(3, [2, 2, 2, 1], None, "", id="multi-event-txns"),
        pytest.param(3, [2, 2, 2, 1], 1, "", id="multi-event-txns-pruned"),
        pytest.param(100, [1, "assert", 1], None, ASSERT_ONLY_BUG, id="assert-only-txn"),
        pytest.param(3, [1, 5], None, OVERSIZED_BUG, id="txn-larger-than-history"),
    ],
)
async def test_resumable_history_is_the_same_after_a_reopen(
    open_sqlite, monkeypatch, history, txns, prune_every, diagnosis
):
    if prune_every is not None:
        monkeypatch.setattr(sqlite_backend, "_PRUNE_EVERY", prune_every)
    store = await open_sqlite(history=history)
    serial = 0
    for txn in txns:
        if txn == "assert":
            ops = [Assert(store.view().get(Machine, "m0"))]
        else:
            ops = [Create(machine(f"m{serial + i}")) for i in range(txn)]
            serial += txn
        await commit(store, *ops)
    before = {since: await replay(store, since) for since in range(store.revision + 1)}
    await store.close()

    reopened = await open_sqlite(history=history)
    after = {since: await replay(reopened, since) for since in range(reopened.revision + 1)}
    differences = {since: (before[since], after[since]) for since in before if before[since] != after[since]}
    assert not differences, (
        f"{diagnosis}\nwatch(since) answers differently after a reopen, {{since: (before, after)}}: {differences!r}"
    )


async def test_failed_disk_write_is_unavailable_for_the_whole_batch(open_sqlite, monkeypatch):
    store = await open_sqlite()
    existing = (await commit(store, Create(machine("m0", "h0")))).objects[0]
    before = snapshot(store)

    async def broken(changes, history):
        raise OSError("disk full")

    monkeypatch.setattr(store._log, "write", broken)
    async with watching(store) as changes:
        results = await asyncio.wait_for(
            asyncio.gather(
                store.commit([Create(machine("m1"))]),
                store.commit([Update(replace(existing, cpus=4.0))]),
                store.commit([Create(machine("m2")), Create(node("n1"))]),
                store.commit([Create(machine("m3", "h0"))]),  # invalid anyway: refused for its own reason
                return_exceptions=True,
            ),
            WAIT,
        )
        assert [type(r) for r in results] == [Unavailable, Unavailable, Unavailable, AlreadyExists]
        assert snapshot(store) == before

        monkeypatch.undo()
        done = await commit(store, Create(machine("m1")))
        assert done.revision == before[0] + 1  # the failed batch consumed no revision
        (change,) = await take(changes, 1)  # watchers never saw the failed batch
        assert change.revision == done.revision
    assert store.view().get(Machine, "m0") == existing
    await store.close()

    reopened = await open_sqlite()
    assert sorted(m.id for m in reopened.view().all(Machine)) == ["m0", "m1"]
    assert reopened.revision == done.revision


async def test_failed_disk_write_leaves_the_non_unique_indexes_as_they_were(open_sqlite, monkeypatch):
    store = await open_sqlite()
    e1 = (await commit(store, Create(endpoint("e1", "api", 1, machine_id="m1")))).objects[0]
    before = endpoint_index(store.view())

    async def broken(changes, history):
        raise OSError("disk full")

    monkeypatch.setattr(store._log, "write", broken)
    results = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Update(replace(e1, service="db", machine_id="m2"))]),
            store.commit([Create(endpoint("e2", "api", 2, machine_id="m2"))]),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    assert endpoint_index(store.view()) == before
    assert store.view().where(Endpoint, "service", "api") == [e1]
    monkeypatch.undo()
    await store.close()
    reopened = await open_sqlite()
    assert endpoint_index(reopened.view()) == before


class _FailingConnection:
    """Wraps the log's sqlite3 connection; fails the events insert, i.e. inside the SQL transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql, params=()):
        if sql.startswith("INSERT INTO events"):
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, params)

    def executemany(self, sql, params):
        if sql.startswith("INSERT INTO events"):
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.executemany(sql, params)

    def __getattr__(self, name):
        return getattr(self._db, name)


async def test_failure_inside_the_sql_transaction_rolls_it_back(open_sqlite, db_path, monkeypatch):
    store = await open_sqlite()
    v1 = (await commit(store, Create(machine("m0")))).objects[0]
    before = snapshot(store)
    log = store._log
    monkeypatch.setattr(log, "_db", _FailingConnection(log._db))
    results = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Create(machine("m1"))]),
            store.commit([Delete(v1)]),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    assert snapshot(store) == before
    monkeypatch.undo()
    done = await commit(store, Create(machine("m2")))
    assert done.revision == before[0] + 1
    await store.close()

    assert sorted(rows(db_path, "SELECT id FROM objects")) == [("m0",), ("m2",)]
    reopened = await open_sqlite()
    assert sorted(m.id for m in reopened.view().all(Machine)) == ["m0", "m2"]
    assert reopened.revision == done.revision
    async with watching(reopened, since=0) as changes:
        assert [c.revision for c in await take(changes, 2)] == [1, 2]


async def test_reader_never_sees_an_in_flight_write(open_sqlite, monkeypatch):
    store = await open_sqlite()
    await commit(store, Create(machine("m0")))
    before = snapshot(store)
    async with held_writes(store, monkeypatch) as (entered, release), watching(store) as changes:
        task = asyncio.ensure_future(store.commit([Create(machine("m1", "new-host")), Create(node("n1"))]))
        await asyncio.wait_for(entered.wait(), WAIT)
        view = store.view()
        assert view.get(Machine, "m1") is None
        assert view.lookup(Machine, "hostname", "new-host") is None
        assert view.count(Machine) == 1
        assert store.revision == before[0]
        assert snapshot(store) == before
        # a commit queued meanwhile waits for the next batch and is not visible either
        second = asyncio.ensure_future(store.commit([Create(machine("m2"))]))
        await asyncio.sleep(0.01)
        assert not task.done()
        assert not second.done()
        assert snapshot(store) == before

        release.set()
        done = await asyncio.wait_for(task, WAIT)
        assert store.view().get(Machine, "m1") == done.objects[0]
        assert (await asyncio.wait_for(second, WAIT)).revision == done.revision + 1
        assert [c.revision for c in await take(changes, 2)] == [done.revision, done.revision + 1]


async def test_reader_sees_changed_and_deleted_objects_as_before_an_in_flight_write(open_sqlite, monkeypatch):
    """The batch is applied once and stays applied while it is written; reads answer from before it."""
    store = await open_sqlite()
    m0, e1, d0 = (
        await commit(
            store,
            Create(machine("m0", "old-host")),
            Create(endpoint("e1", "api", 1, machine_id="m1")),
            Create(domain("d0", "a.example")),
        )
    ).objects
    index_before = endpoint_index(store.view())
    before = snapshot(store)
    async with held_writes(store, monkeypatch) as (entered, release):
        writes = [
            store.commit([Update(replace(m0, hostname="new-host"))]),
            store.commit([Update(replace(e1, service="db", machine_id="m2")), Delete(d0)]),
            store.commit([Create(endpoint("e2", "api", 2, machine_id="m2")), Create(machine("m1", "other"))]),
        ]
        batch = asyncio.ensure_future(asyncio.gather(*writes))
        await asyncio.wait_for(entered.wait(), WAIT)
        view = store.view()
        assert view.get(Machine, "m0") == m0
        assert view.lookup(Machine, "hostname", "old-host") == m0
        assert view.lookup(Machine, "hostname", "new-host") is None
        assert view.lookup(Machine, "hostname", "other") is None
        assert view.get(Domain, "d0") == d0
        assert view.lookup(Domain, "name", "a.example") == d0
        assert endpoint_index(view) == index_before
        assert view.where(Endpoint, "service", "api") == [e1]
        assert view.count(Endpoint) == view.count(Domain) == 1
        assert store.revision == view.revision == before[0]
        assert snapshot(store) == before

        release.set()
        done = await asyncio.wait_for(batch, WAIT)
    view = store.view()
    assert view.get(Machine, "m0") == done[0].objects[0]
    assert view.lookup(Machine, "hostname", "new-host") == done[0].objects[0]
    assert view.get(Domain, "d0") is None
    assert endpoint_index(view) == {
        ("service", "api"): ["e2"],
        ("service", "db"): ["e1"],
        ("machine", "m1"): [],
        ("machine", "m2"): ["e1", "e2"],
    }
    assert store.revision == before[0] + 3


async def test_a_view_held_across_writes_reads_what_is_durable_at_each_read(open_sqlite, monkeypatch):
    """Plans made step by step and listings read a slice at a time hold a view across awaits."""
    store = await open_sqlite()
    m0 = (await commit(store, Create(machine("m0", "h0")))).objects[0]
    held_before = store.view()
    async with held_writes(store, monkeypatch) as (entered, release):
        first = asyncio.ensure_future(store.commit([Update(replace(m0, hostname="h1"))]))
        await asyncio.wait_for(entered.wait(), WAIT)
        held_during = store.view()
        for view in (held_before, held_during):
            assert view.get(Machine, "m0") == m0
            assert view.revision == m0.version
        release.set()
        m1 = (await asyncio.wait_for(first, WAIT)).objects[0]
        for view in (held_before, held_during):
            assert view.get(Machine, "m0") == m1
            assert view.lookup(Machine, "hostname", "h1") == m1

        entered.clear()
        release.clear()
        second = asyncio.ensure_future(store.commit([Update(replace(m1, hostname="h2"))]))
        await asyncio.wait_for(entered.wait(), WAIT)
        for view in (held_before, held_during):  # the first window's view does not outlive it
            assert view.get(Machine, "m0") == m1
            assert view.lookup(Machine, "hostname", "h2") is None
        release.set()
        m2 = (await asyncio.wait_for(second, WAIT)).objects[0]
    assert held_during.get(Machine, "m0") == m2


async def test_a_writer_cancelled_mid_write_leaves_the_batch_unseen(open_sqlite, monkeypatch):
    store = await open_sqlite()
    m0 = (await commit(store, Create(machine("m0", "old-host")))).objects[0]
    before = snapshot(store)
    async with held_writes(store, monkeypatch) as (entered, _):
        write = asyncio.ensure_future(store.commit([Update(replace(m0, hostname="new-host"))]))
        await asyncio.wait_for(entered.wait(), WAIT)
        store._writer.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert store._writer is None
        assert snapshot(store) == before
        assert store.view().lookup(Machine, "hostname", "old-host") == m0
        write.cancel()


@contextlib.asynccontextmanager
async def held_writes(store, monkeypatch) -> AsyncIterator[tuple[asyncio.Event, asyncio.Event]]:
    """Holds the store's disk writes until `release` is set (at the latest on exit, so a failed
    assertion does not leave the store's close waiting for ever); `entered` is set when one starts."""
    entered = asyncio.Event()
    release = asyncio.Event()
    original = store._log.write

    async def blocked(changes, history):
        entered.set()
        await release.wait()
        await original(changes, history)

    monkeypatch.setattr(store._log, "write", blocked)
    try:
        yield entered, release
    finally:
        release.set()


async def test_close_waits_for_pending_writes(open_sqlite):
    store = await open_sqlite()
    pending = [asyncio.ensure_future(store.commit([Create(machine(f"m{i}"))])) for i in range(5)]
    await asyncio.sleep(0)
    await asyncio.wait_for(store.close(), WAIT)
    assert all(p.done() and not p.cancelled() and p.exception() is None for p in pending)
    reopened = await open_sqlite()
    assert reopened.view().count(Machine) == 5
