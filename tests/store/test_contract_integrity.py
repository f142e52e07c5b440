"""The store contract, integrity: unique keys, references and cross-object invariants (every backend, see conftest.py)."""

from __future__ import annotations

import pytest
from store_helpers import (
    binding,
    commit,
    domain,
    machine,
    node,
    provision,
    replace,
    route,
    seed,
    snapshot,
)

from treeherd.model.errors import (
    AlreadyExists,
    NotFound,
    Refused,
    VersionConflict,
)
from treeherd.model.kinds import binding_key, route_key
from treeherd.model.objects import Binding, Domain, Machine, TreeNode
from treeherd.model.ops import Create, Delete, Update

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
