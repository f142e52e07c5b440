"""The store contract, reads: gets, unique lookups, referrers, counts and the non-unique indexes (every backend, see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
from store_helpers import (
    WAIT,
    commit,
    endpoint,
    machine,
    replace,
    seed,
    snapshot,
)

from treeherd.model.discovery import Endpoint
from treeherd.model.errors import (
    AlreadyExists,
)
from treeherd.model.kinds import binding_key, route_key
from treeherd.model.objects import Binding, Domain, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Create, Delete, Update

# ---- reads ---------------------------------------------------------------------------------------


async def test_empty_store(store):
    view = store.view()
    assert store.revision == view.revision  # 0 for an embedded store; etcd's revision for etcd
    assert (await commit(store, Create(machine("m1")))).revision == view.revision
    await commit(store, Delete(view.get(Machine, "m1")))
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
