"""The store contract, run against every backend (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
from store_helpers import (
    T0,
    WAIT,
    binding,
    domain,
    endpoint,
    machine,
    node,
    nothing_pending,
    provision,
    replace,
    route,
    snapshot,
    take,
    watching,
)

from treeherd.model.discovery import Endpoint
from treeherd.model.errors import (
    AlreadyExists,
    Compacted,
    NotFound,
    Refused,
    Unavailable,
    VersionConflict,
    WatchLagged,
)
from treeherd.model.kinds import binding_key, route_key
from treeherd.model.objects import Binding, Domain, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete, Update
from treeherd.store import engine


async def commit(store, *ops):
    return await asyncio.wait_for(store.commit(list(ops)), WAIT)


async def seed(store):
    """A small tree: root > web (bound to m1, routed on d1) and root > db; returns the stored objects."""
    done = await commit(
        store,
        Create(domain("d1", "example.com")),
        Create(node("root")),
        Create(node("web", "root.web", parent="root", domain_uris=[route("d1", "/")])),
        Create(node("db", "root.db", parent="root")),
        Create(machine("m1", "host1")),
        Create(machine("m2", "host2")),
        Create(binding("b1", "m1", "web")),
        Create(provision("p1", "host3", "db")),
    )
    return {obj.id: obj for obj in done.objects}


# ---- reads ---------------------------------------------------------------------------------------


async def test_empty_store(store):
    view = store.view()
    assert store.revision == 0
    assert view.revision == 0
    assert view.get(TreeNode, "x") is None
    assert view.count(Machine) == 0
    assert list(view.all(Binding)) == []


async def test_create_then_read(store):
    objs = await seed(store)
    view = store.view()
    assert view.get(TreeNode, "web") == objs["web"]
    assert view.get(Machine, "m1") == objs["m1"]
    assert view.get(Binding, "b1") == objs["b1"]
    assert view.get(Domain, "d1") == objs["d1"]
    assert view.get(ProvisioningRecord, "p1") == objs["p1"]
    assert view.get(Machine, "web") is None  # ids are per kind


async def test_lookup_by_every_unique_index(store):
    objs = await seed(store)
    view = store.view()
    assert view.lookup(TreeNode, "path", "root.web") == objs["web"]
    assert view.lookup(TreeNode, "route", route_key("d1", "/")) == objs["web"]
    assert view.lookup(Machine, "hostname", "host2") == objs["m2"]
    assert view.lookup(Binding, "pair", binding_key("m1", "web")) == objs["b1"]
    assert view.lookup(Domain, "name", "example.com") == objs["d1"]
    assert view.lookup(ProvisioningRecord, "hostname", "host3") == objs["p1"]
    assert view.lookup(TreeNode, "path", "nope") is None
    assert view.lookup(Machine, "hostname", "host3") is None  # a provisioning hostname is another index


async def test_referrers(store):
    objs = await seed(store)
    view = store.view()
    assert sorted(n.id for n in view.referrers(TreeNode, "parent", "root")) == ["db", "web"]
    assert view.referrers(TreeNode, "parent", "web") == []
    assert view.referrers(Binding, "machine", "m1") == [objs["b1"]]
    assert view.referrers(Binding, "node", "web") == [objs["b1"]]
    assert view.referrers(Binding, "machine", "m2") == []
    assert view.referrers(TreeNode, "route_domain", "d1") == [objs["web"]]
    assert view.referrers(ProvisioningRecord, "node", "db") == [objs["p1"]]


async def test_all_and_count(store):
    objs = await seed(store)
    view = store.view()
    assert view.count(TreeNode) == 3
    assert view.count(Machine) == 2
    assert view.count(Binding) == 1
    assert sorted(view.all(TreeNode), key=lambda n: n.id) == [objs["db"], objs["root"], objs["web"]]
    await commit(store, Delete(objs["m2"]))
    assert view.count(Machine) == 1
    assert [m.id for m in view.all(Machine)] == ["m1"]


# ---- versions ------------------------------------------------------------------------------------


async def test_commit_stamps_version_with_revision(store):
    first = await commit(store, Create(machine("m1")), Create(machine("m2")))
    assert first.revision == 1
    assert [o.version for o in first.objects] == [1, 1]
    second = await commit(store, Update(replace(first.objects[0], cpus=4.0)))
    assert second.revision == 2
    assert store.revision == 2
    assert store.view().revision == 2
    updated = store.view().get(Machine, "m1")
    assert updated.version == 2
    assert updated.cpus == 4.0
    assert updated.created_at == T0  # the store does not touch timestamps
    assert store.view().get(Machine, "m2").version == 1  # untouched objects keep their version


async def test_create_ignores_the_callers_version(store):
    done = await commit(store, Create(replace(machine("m1"), version=42)))
    assert done.objects[0].version == 1


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
    with pytest.raises(NotFound):
        await commit(store, Update(machine("ghost")))
    with pytest.raises(NotFound):
        await commit(store, Delete(machine("ghost")))
    with pytest.raises(NotFound):
        await commit(store, Assert(machine("ghost")))
    assert store.revision == 0


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


# ---- unique keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "field"),
    [
        pytest.param(Create(node("other", "root.web", parent="root")), "path", id="node-path"),
        pytest.param(Create(node("other", "x", domain_uris=[route("d1", "/")])), "route", id="node-route"),
        pytest.param(Create(machine("m9", "host1")), "hostname", id="machine-hostname"),
        pytest.param(Create(binding("b9", "m1", "web")), "pair", id="binding-pair"),
        pytest.param(Create(domain("d9", "example.com")), "name", id="domain-name"),
        pytest.param(Create(provision("p9", "host3", "web")), "hostname", id="provision-hostname"),
        pytest.param(Create(machine("m1", "fresh")), "id", id="same-id"),
    ],
)
async def test_unique_key_violation_on_create(store, op, field):
    await seed(store)
    before = snapshot(store)
    with pytest.raises(AlreadyExists) as caught:
        await commit(store, op)
    assert caught.value.field == field
    assert snapshot(store) == before


async def test_unique_key_violation_on_update(store):
    objs = await seed(store)
    before = snapshot(store)
    with pytest.raises(AlreadyExists):
        await commit(store, Update(replace(objs["m2"], hostname="host1")))
    with pytest.raises(AlreadyExists):
        await commit(store, Update(replace(objs["db"], path="root.web")))
    with pytest.raises(AlreadyExists):
        await commit(store, Update(replace(objs["db"], domain_uris=[route("d1", "/")])))
    assert snapshot(store) == before


async def test_same_route_uri_on_another_domain_is_fine(store):
    await seed(store)
    await commit(store, Create(domain("d2", "example.org")))
    await commit(store, Create(node("api", "root.api", parent="root", domain_uris=[route("d2", "/")])))
    assert store.view().lookup(TreeNode, "route", route_key("d2", "/")).id == "api"


async def test_freed_keys_can_be_reused(store):
    objs = await seed(store)
    await commit(store, Update(replace(objs["m2"], hostname="host9")))
    assert store.view().lookup(Machine, "hostname", "host2") is None
    await commit(store, Create(machine("m3", "host2")))
    await commit(store, Delete(objs["b1"]))
    assert store.view().lookup(Binding, "pair", binding_key("m1", "web")) is None
    await commit(store, Create(binding("b2", "m1", "web")))
    assert store.view().lookup(Binding, "pair", binding_key("m1", "web")).id == "b2"


# ---- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "field"),
    [
        pytest.param(Create(node("x", "root.x", parent="nope")), "parent", id="node-parent"),
        pytest.param(Create(node("x", "x", domain_uris=[route("nope", "/x")])), "route_domain", id="route"),
        pytest.param(Create(binding("b9", "nope", "web")), "machine", id="binding-machine"),
        pytest.param(Create(binding("b9", "m2", "nope")), "node", id="binding-node"),
        pytest.param(Create(provision("p9", "h9", "nope")), "node", id="provision-node"),
    ],
)
async def test_missing_reference_is_not_found(store, op, field):
    await seed(store)
    before = snapshot(store)
    with pytest.raises(NotFound) as caught:
        await commit(store, op)
    assert caught.value.field == field
    assert snapshot(store) == before


async def test_update_to_missing_reference_is_not_found(store):
    objs = await seed(store)
    before = snapshot(store)
    with pytest.raises(NotFound):
        await commit(store, Update(replace(objs["db"], parent_id="nope")))
    with pytest.raises(NotFound):
        await commit(store, Update(replace(objs["b1"], machine_id="nope")))
    assert snapshot(store) == before


async def test_reference_to_object_created_earlier_in_the_txn(store):
    done = await commit(
        store,
        Create(node("root")),
        Create(node("child", "root.child", parent="root")),
        Create(machine("m1")),
        Create(binding("b1", "m1", "child")),
    )
    assert len(done.objects) == 4
    assert store.view().referrers(Binding, "node", "child")[0].id == "b1"


@pytest.mark.parametrize(
    "victim",
    [
        pytest.param("root", id="node-with-children"),
        pytest.param("web", id="node-with-binding"),
        pytest.param("db", id="node-with-provision"),
        pytest.param("m1", id="machine-with-binding"),
        pytest.param("d1", id="domain-with-route"),
    ],
)
async def test_deleting_a_referenced_object_is_refused(store, victim):
    objs = await seed(store)
    before = snapshot(store)
    with pytest.raises(Refused):
        await commit(store, Delete(objs[victim]))
    assert snapshot(store) == before


async def test_delete_children_then_parent_in_one_txn(store):
    objs = await seed(store)
    done = await commit(
        store,
        Delete(objs["b1"]),
        Delete(objs["p1"]),
        Delete(objs["web"]),
        Delete(objs["db"]),
        Delete(objs["root"]),
        Delete(objs["m1"]),
        Delete(objs["d1"]),
    )
    assert len(done.objects) == 7
    view = store.view()
    assert view.count(TreeNode) == 0
    assert view.count(Binding) == 0
    assert view.count(Domain) == 0
    assert [m.id for m in view.all(Machine)] == ["m2"]
    assert view.referrers(TreeNode, "parent", "root") == []


async def test_delete_parent_before_children_is_refused(store):
    objs = await seed(store)
    before = snapshot(store)
    with pytest.raises(Refused):
        await commit(store, Delete(objs["b1"]), Delete(objs["m1"]), Delete(objs["root"]), Delete(objs["web"]))
    assert snapshot(store) == before


async def test_deleted_object_cannot_be_referenced_later_in_the_txn(store):
    objs = await seed(store)
    before = snapshot(store)
    with pytest.raises(NotFound):
        await commit(store, Delete(objs["m2"]), Create(binding("b2", "m2", "web")))
    assert snapshot(store) == before


# ---- non-unique indexes --------------------------------------------------------------------------


async def seed_endpoints(store):
    """Endpoints of api (e1, a task's on m1; e2, external) and db (e3, on m1); returns the stored objects.
    Machine m1 does not exist: an index key names nothing."""
    done = await commit(
        store,
        Create(endpoint("e1", "api", 1, machine_id="m1")),
        Create(endpoint("e2", "api", 2)),
        Create(endpoint("e3", "db", 3, machine_id="m1")),
    )
    return {obj.id: obj for obj in done.objects}


def filed(view, index, key):
    return sorted(e.id for e in view.where(Endpoint, index, key))


async def test_where_reads_the_objects_filed_under_a_key(store):
    objs = await seed_endpoints(store)
    view = store.view()
    assert sorted(view.where(Endpoint, "service", "api"), key=lambda e: e.id) == [objs["e1"], objs["e2"]]
    assert view.where(Endpoint, "service", "db") == [objs["e3"]]
    assert filed(view, "machine", "m1") == ["e1", "e3"]
    assert view.where(Endpoint, "service", "nope") == []
    assert view.where(Endpoint, "machine", "m2") == []  # e2 has no machine: filed under no key


async def test_an_index_checks_and_refuses_nothing(store):
    await seed_endpoints(store)
    m1 = (await commit(store, Create(machine("m1")))).objects[0]
    await commit(store, Delete(m1))  # unlike a reference, an index does not hold its key's object
    assert filed(store.view(), "machine", "m1") == ["e1", "e3"]


async def test_where_follows_updates_that_change_the_key(store):
    objs = await seed_endpoints(store)
    moved = (await commit(store, Update(replace(objs["e1"], service="db", machine_id="m2")))).objects[0]
    view = store.view()
    assert filed(view, "service", "api") == ["e2"]
    assert filed(view, "service", "db") == ["e1", "e3"]
    assert filed(view, "machine", "m1") == ["e3"]
    assert view.where(Endpoint, "machine", "m2") == [moved]
    # an update that keeps its keys is read as it is now
    reweighted = (await commit(store, Update(replace(moved, weight=7)))).objects[0]
    assert view.where(Endpoint, "machine", "m2") == [reweighted]
    # a key no longer set files the object under none
    await commit(store, Update(replace(reweighted, machine_id=None)))
    assert view.where(Endpoint, "machine", "m2") == []
    assert filed(view, "service", "db") == ["e1", "e3"]


async def test_deleted_objects_leave_the_index(store):
    objs = await seed_endpoints(store)
    await commit(store, Delete(objs["e1"]), Delete(objs["e3"]))
    view = store.view()
    assert filed(view, "service", "api") == ["e2"]
    assert view.where(Endpoint, "service", "db") == []
    assert view.where(Endpoint, "machine", "m1") == []
    await commit(store, Create(endpoint("e4", "db", 3, machine_id="m1")))
    assert filed(view, "service", "db") == ["e4"]
    assert filed(view, "machine", "m1") == ["e4"]


async def test_failed_transaction_leaves_the_index_as_it_was(store):
    objs = await seed_endpoints(store)
    before = snapshot(store)
    with pytest.raises(AlreadyExists):
        await commit(
            store,
            Update(replace(objs["e1"], service="web", machine_id="m2")),
            Delete(objs["e2"]),
            Create(endpoint("e4", "web", 4, machine_id="m2")),
            Create(endpoint("e5", "db", 3)),  # db at 10.0.0.1:3 is e3
        )
    assert snapshot(store) == before
    view = store.view()
    assert filed(view, "service", "api") == ["e1", "e2"]
    assert filed(view, "service", "db") == ["e3"]
    assert view.where(Endpoint, "service", "web") == []
    assert filed(view, "machine", "m1") == ["e1", "e3"]
    assert view.where(Endpoint, "machine", "m2") == []


async def test_index_after_a_batch_with_one_refused_transaction(store):
    """Commits grouped in one batch, one refused among them (a durable backend rolls the accepted ones
    back, writes them, and replays them)."""
    objs = await seed_endpoints(store)
    results = await asyncio.wait_for(
        asyncio.gather(
            store.commit([Update(replace(objs["e1"], service="web"))]),
            store.commit([Delete(objs["e2"]), Create(endpoint("e9", "db", 3))]),  # db at :3 is e3
            store.commit([Create(endpoint("e4", "web", 4, machine_id="m1"))]),
            store.commit([Delete(objs["e3"])]),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert isinstance(results[1], AlreadyExists)
    assert not [r for i, r in enumerate(results) if i != 1 and isinstance(r, BaseException)]
    view = store.view()
    assert filed(view, "service", "api") == ["e2"]
    assert filed(view, "service", "web") == ["e1", "e4"]
    assert view.where(Endpoint, "service", "db") == []
    assert filed(view, "machine", "m1") == ["e1", "e4"]


# ---- cross-object invariants (core/tree/integrity.py) --------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(Create(node("x", "elsewhere.x", parent="root")), id="child-path-not-under-parent"),
        pytest.param(Create(node("x", "root.web.x", parent="root")), id="child-path-two-levels-down"),
        pytest.param(Create(node("x", "a.b")), id="root-path-with-dots"),
    ],
)
async def test_node_path_must_extend_its_parents(store, op):
    await seed(store)
    before = snapshot(store)
    with pytest.raises(VersionConflict):
        await commit(store, op)
    assert snapshot(store) == before


async def test_moving_a_node_moves_its_children_in_the_same_txn(store):
    objs = await seed(store)
    await commit(store, Delete(objs["b1"]), Delete(objs["p1"]))
    before = snapshot(store)
    with pytest.raises(VersionConflict):  # the children would be left under the old path
        await commit(store, Update(replace(objs["root"], path="top")))
    assert snapshot(store) == before
    await commit(
        store,
        Update(replace(objs["root"], path="top")),
        Update(replace(objs["web"], path="top.web")),
        Update(replace(objs["db"], path="top.db")),
    )
    assert sorted(n.path for n in store.view().all(TreeNode)) == ["top", "top.db", "top.web"]


async def test_physical_and_virtual_machines_never_share_a_node(store):
    objs = await seed(store)  # m1 (virtual) is bound to web
    await commit(store, Create(machine("metal", "metal1", machine_kind="physical")))
    before = snapshot(store)
    with pytest.raises(Refused):
        await commit(store, Create(binding("b2", "metal", "web")))
    with pytest.raises(Refused):  # turning a bound machine physical while a virtual peer shares its node
        await commit(
            store,
            Create(binding("b2", "m2", "web")),
            Update(replace(objs["m2"], machine_kind="physical")),
        )
    assert snapshot(store) == before
    await commit(store, Create(binding("b2", "metal", "db")))  # another node is fine


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
    for i in range(4):
        await commit(store, Create(machine(f"m{i}")))
    with pytest.raises(Compacted) as caught:
        store.watch(since=1)
    oldest = caught.value.oldest
    assert oldest == 2
    assert caught.value.field == "since"
    with pytest.raises(Compacted):
        store.watch(since=0)
    async with watching(store, since=oldest) as changes:
        assert [c.revision for c in await take(changes, 2)] == [3, 4]


async def test_history_drops_whole_transactions(make_store):
    store = await make_store(history=3)
    await commit(store, Create(machine("a")), Create(machine("b")))
    await commit(store, Create(machine("c")), Create(machine("d")))
    # 4 events > 3: revision 1 is dropped whole, never replayed in part
    with pytest.raises(Compacted):
        store.watch(since=0)
    async with watching(store, since=1) as changes:
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
