"""The store contract, concurrency and watches: group commit, revisions, history, lagging watchers (every backend, see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
from store_helpers import (
    WAIT,
    commit,
    machine,
    node,
    nothing_pending,
    replace,
    take,
    watching,
)

from treeherd.model.errors import (
    AlreadyExists,
    Compacted,
    Unavailable,
    VersionConflict,
    WatchLagged,
)
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.store import engine

# ---- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_commits_get_distinct_consecutive_revisions(store):
    await commit(store, Create(machine("m0")))
    base = store.revision
    results = await asyncio.wait_for(
        asyncio.gather(*(store.commit([Create(machine(f"m{i}", f"h{i}"))]) for i in range(1, 201))), WAIT * 3
    )
    revisions = [r.revision for r in results]
    assert sorted(revisions) == list(range(base + 1, base + 201))
    for done in results:
        assert done.objects[0].version == done.revision
    assert store.revision == base + 200
    assert store.view().count(Machine) == 201


async def test_one_bad_txn_among_concurrent_commits_fails_alone(store):
    await commit(store, Create(machine("m0", "taken")))
    base = store.revision
    bad = 117

    def ops(i):
        return [Create(machine(f"m{i}", "taken" if i == bad else f"h{i}"))]

    results = await asyncio.wait_for(
        asyncio.gather(*(store.commit(ops(i)) for i in range(1, 201)), return_exceptions=True), WAIT * 3
    )
    assert isinstance(results[bad - 1], AlreadyExists)
    good = [r for i, r in enumerate(results, 1) if i != bad]
    assert not [r for r in good if isinstance(r, BaseException)]
    assert sorted(r.revision for r in good) == list(range(base + 1, base + 200))
    assert store.view().get(Machine, f"m{bad}") is None
    assert store.view().count(Machine) == 200


async def test_dependent_txns_in_one_batch(store):
    """A txn may build on one queued before it in the same batch."""
    base = store.revision
    first = store.commit([Create(machine("m1", "a"))])
    second = store.commit([Update(replace(machine("m1", "b"), version=base + 1))])
    third = store.commit([Update(replace(machine("m1", "c"), version=base + 1))])  # stale after second
    r1, r2, r3 = await asyncio.wait_for(asyncio.gather(first, second, third, return_exceptions=True), WAIT)
    assert r1.revision == base + 1
    assert r2.revision == base + 2
    assert isinstance(r3, VersionConflict)
    assert store.view().get(Machine, "m1").hostname == "b"


async def test_cancelled_caller_does_not_cancel_its_write(store):
    task = asyncio.create_task(store.commit([Create(machine("m1"))]))
    await asyncio.sleep(0)
    task.cancel()
    await commit(store, Create(machine("m2")))  # queued behind the first: done means the first is done
    assert store.view().get(Machine, "m1") is not None
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_commit_after_close_is_unavailable(store):
    await store.close()
    with pytest.raises(Unavailable):
        await commit(store, Create(machine("m1")))


# ---- watch ---------------------------------------------------------------------------------------


async def test_watch_from_now_sees_later_changes_in_order(store):
    await commit(store, Create(machine("m0")))
    async with watching(store) as changes:
        r1 = await commit(store, Create(machine("m1")), Create(machine("m2")))
        r2 = await commit(store, Update(replace(r1.objects[0], cpus=8.0)))
        r3 = await commit(store, Delete(r2.objects[0]))
        got = await take(changes, 3)
        assert [c.revision for c in got] == [r1.revision, r2.revision, r3.revision]
        assert [[e.type for e in c.events] for c in got] == [["created", "created"], ["updated"], ["deleted"]]
        assert [e.object for e in got[0].events] == r1.objects
        assert all(e.revision == c.revision for c in got for e in c.events)
        assert got[1].events[0].object == r2.objects[0]
        assert await nothing_pending(changes)


async def test_watch_since_replays_then_continues_live(store):
    revs = [(await commit(store, Create(machine(f"m{i}")))).revision for i in range(5)]
    async with watching(store, since=revs[1]) as changes:
        replay = await take(changes, 3)
        assert [c.revision for c in replay] == revs[2:]
        assert [c.events[0].object.id for c in replay] == ["m2", "m3", "m4"]
        live = await commit(store, Create(machine("m5")))
        (change,) = await take(changes, 1)
        assert change.revision == live.revision
        assert await nothing_pending(changes)


async def test_watch_since_current_revision_is_live_only(store):
    await commit(store, Create(machine("m0")))
    async with watching(store, since=store.revision) as changes:
        live = await commit(store, Create(machine("m1")))
        assert [c.revision for c in await take(changes, 1)] == [live.revision]


async def test_watch_since_zero_replays_everything_when_retained(store):
    revs = [(await commit(store, Create(machine(f"m{i}")))).revision for i in range(3)]
    async with watching(store, since=0) as changes:
        assert [c.revision for c in await take(changes, 3)] == revs


async def test_watch_below_retained_history_is_compacted(make_store):
    store = await make_store(history=2)
    base = store.revision
    for i in range(4):
        await commit(store, Create(machine(f"m{i}")))
    with pytest.raises(Compacted) as caught:
        store.watch(since=base + 1)
    oldest = caught.value.oldest
    assert oldest == base + 2
    assert caught.value.field == "since"
    with pytest.raises(Compacted):
        store.watch(since=0)
    async with watching(store, since=oldest) as changes:
        assert [c.revision for c in await take(changes, 2)] == [base + 3, base + 4]


async def test_history_drops_whole_transactions(make_store):
    store = await make_store(history=3)
    first = await commit(store, Create(machine("a")), Create(machine("b")))
    await commit(store, Create(machine("c")), Create(machine("d")))
    # 4 events > 3: the first transaction is dropped whole, never replayed in part
    with pytest.raises(Compacted):
        store.watch(since=0)
    async with watching(store, since=first.revision) as changes:
        (change,) = await take(changes, 1)
        assert [e.object.id for e in change.events] == ["c", "d"]


async def test_lagging_watcher_raises_watch_lagged(store, monkeypatch):
    monkeypatch.setattr(engine, "DEFAULT_WATCH_BUFFER", 3)
    async with watching(store) as changes:
        revs = [(await commit(store, Create(machine(f"m{i}")))).revision for i in range(6)]
        got = await take(changes, 3)
        assert [c.revision for c in got] == revs[:3]
        with pytest.raises(WatchLagged) as caught:
            await asyncio.wait_for(anext(changes), WAIT)
        assert caught.value.last_revision == revs[2]
    # the watcher resumes from where it was told, and misses nothing
    async with watching(store, since=caught.value.last_revision) as changes:
        assert [c.revision for c in await take(changes, 3)] == revs[3:]


async def test_lagging_watcher_does_not_disturb_others(store, monkeypatch):
    monkeypatch.setattr(engine, "DEFAULT_WATCH_BUFFER", 2)
    async with watching(store) as slow, watching(store) as fast:
        for i in range(4):
            await commit(store, Create(machine(f"m{i}")))
            assert len(await take(fast, 1)) == 1
        await take(slow, 2)
        with pytest.raises(WatchLagged):
            await asyncio.wait_for(anext(slow), WAIT)
        await commit(store, Create(machine("m9")))
        assert len(await take(fast, 1)) == 1


async def test_deletion_events_carry_the_last_state(store):
    v1 = (await commit(store, Create(node("n1", labels={"a": "1"})))).objects[0]
    v2 = (await commit(store, Update(replace(v1, labels={"a": "2"})))).objects[0]
    async with watching(store) as changes:
        done = await commit(store, Delete(v2))
        assert done.objects == [v2]
        (change,) = await take(changes, 1)
        (event,) = change.events
        assert event.type == "deleted"
        assert event.revision == done.revision
        assert event.object == v2
        assert event.object.labels == {"a": "2"}
        assert event.object.version == v2.version


async def test_close_ends_open_watches(make_store):
    store = await make_store()
    watch = store.watch()
    iterator = aiter(watch)
    pending = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT)
