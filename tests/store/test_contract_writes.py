"""The store contract, writes: versions and all-or-nothing transactions (every backend, see conftest.py)."""

from __future__ import annotations

import pytest
from store_helpers import (
    T0,
    commit,
    machine,
    replace,
    snapshot,
    take,
    watching,
)

from treeherd.model.errors import (
    AlreadyExists,
    NotFound,
    VersionConflict,
)
from treeherd.model.objects import Machine
from treeherd.model.ops import Assert, Create, Delete, Update

# ---- versions ------------------------------------------------------------------------------------


async def test_commit_stamps_version_with_revision(store):
    base = store.revision
    first = await commit(store, Create(machine("m1")), Create(machine("m2")))
    assert first.revision == base + 1
    assert [o.version for o in first.objects] == [base + 1, base + 1]
    second = await commit(store, Update(replace(first.objects[0], cpus=4.0)))
    assert second.revision == base + 2
    assert store.revision == base + 2
    assert store.view().revision == base + 2
    updated = store.view().get(Machine, "m1")
    assert updated.version == base + 2
    assert updated.cpus == 4.0
    assert updated.created_at == T0  # the store does not touch timestamps
    assert store.view().get(Machine, "m2").version == base + 1  # untouched objects keep their version


async def test_create_ignores_the_callers_version(store):
    done = await commit(store, Create(replace(machine("m1"), version=42)))
    assert done.objects[0].version == done.revision


async def test_update_with_stale_version_conflicts_and_changes_nothing(store):
    v1 = (await commit(store, Create(machine("m1", "a")))).objects[0]
    v2 = (await commit(store, Update(replace(v1, hostname="b")))).objects[0]
    before = snapshot(store)
    with pytest.raises(VersionConflict) as caught:
        await commit(store, Update(replace(v1, hostname="c")))
    assert caught.value.field == "version"
    assert snapshot(store) == before
    assert store.view().get(Machine, "m1") == v2
    assert store.view().lookup(Machine, "hostname", "c") is None


async def test_update_with_future_version_conflicts(store):
    v1 = (await commit(store, Create(machine("m1")))).objects[0]
    with pytest.raises(VersionConflict):
        await commit(store, Update(replace(v1, version=v1.version + 1, cpus=1.0)))


async def test_delete_with_stale_version_conflicts(store):
    v1 = (await commit(store, Create(machine("m1")))).objects[0]
    await commit(store, Update(replace(v1, cpus=2.0)))
    before = snapshot(store)
    with pytest.raises(VersionConflict):
        await commit(store, Delete(v1))
    assert snapshot(store) == before


async def test_assert_current_passes_and_writes_nothing(store):
    m = (await commit(store, Create(machine("m1")))).objects[0]
    done = await commit(store, Assert(m), Create(machine("m2")))
    assert [o.id for o in done.objects] == ["m2"]
    assert store.view().get(Machine, "m1") == m


async def test_assert_stale_fails_the_whole_transaction(store):
    v1 = (await commit(store, Create(machine("m1")))).objects[0]
    await commit(store, Update(replace(v1, cpus=2.0)))
    before = snapshot(store)
    with pytest.raises(VersionConflict):
        await commit(store, Create(machine("m2")), Assert(v1), Create(machine("m3")))
    assert snapshot(store) == before


async def test_update_or_delete_of_missing_object_is_not_found(store):
    base = store.revision
    with pytest.raises(NotFound):
        await commit(store, Update(machine("ghost")))
    with pytest.raises(NotFound):
        await commit(store, Delete(machine("ghost")))
    with pytest.raises(NotFound):
        await commit(store, Assert(machine("ghost")))
    assert store.revision == base


# ---- all or nothing ------------------------------------------------------------------------------


async def test_failing_third_op_leaves_first_two_unapplied(store):
    existing = (await commit(store, Create(machine("m0", "taken")))).objects[0]
    before = snapshot(store)
    with pytest.raises(AlreadyExists):
        await commit(
            store,
            Create(machine("m1", "one")),
            Update(replace(existing, hostname="renamed")),
            Create(machine("m2", "one")),
        )
    assert snapshot(store) == before
    view = store.view()
    assert view.get(Machine, "m1") is None
    assert view.lookup(Machine, "hostname", "one") is None
    assert view.lookup(Machine, "hostname", "taken") == existing
    assert view.lookup(Machine, "hostname", "renamed") is None
    # the revision was not consumed: the next commit takes the next number
    assert (await commit(store, Create(machine("m1", "one")))).revision == before[0] + 1


async def test_failing_txn_is_not_published(store):
    await commit(store, Create(machine("m1", "h")))
    async with watching(store) as changes:
        with pytest.raises(AlreadyExists):
            await commit(store, Create(machine("m2", "other")), Create(machine("m3", "h")))
        ok = await commit(store, Create(machine("m4")))
        (change,) = await take(changes, 1)
        assert change.revision == ok.revision
        assert [e.object.id for e in change.events] == ["m4"]


async def test_ops_apply_in_order_within_a_txn(store):
    m = machine("m1", "a")
    created = (await commit(store, Create(m))).objects[0]
    # free a hostname, then take it, in one transaction
    done = await commit(store, Update(replace(created, hostname="b")), Create(machine("m2", "a")))
    assert store.view().lookup(Machine, "hostname", "a").id == "m2"
    assert store.view().lookup(Machine, "hostname", "b").id == "m1"
    assert [o.version for o in done.objects] == [done.revision, done.revision]
