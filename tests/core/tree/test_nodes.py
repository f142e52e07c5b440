"""The plans of core/tree/nodes.py (create, update, move, delete a node; its routes), called directly
against a MemoryStore's view.

State is built by committing what the plans return (see `World` in tests/core/conftest.py), so every test
also checks that the operations a plan makes are ones the store accepts.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from msgspec import UNSET

from treeherd.core.tree import nodes
from treeherd.core.tree.tree import MAX_DEPTH, MAX_PATH_LENGTH
from treeherd.model.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    Refused,
    TreeherdError,
    VersionConflict,
)
from treeherd.model.objects import Binding, DomainUri, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete
from treeherd.model.requests import (
    NodeCreate,
    NodeMove,
    NodeUpdate,
    RouteSpec,
)
from treeherd.testing.factories import FIXED_NOW

LATER = FIXED_NOW + timedelta(hours=1)


# ---- create ---------------------------------------------------------------------------------------
async def test_create_root_node(world) -> None:
    ops = nodes.plan_create_node(world.view, NodeCreate(path="corp"), FIXED_NOW, world.ids)
    assert len(ops) == 1
    assert isinstance(ops[0], Create)
    created = ops[0].object
    assert isinstance(created, TreeNode)
    assert (created.id, created.path, created.parent_id) == ("t-1", "corp", None)
    assert created.created_at == created.updated_at == FIXED_NOW
    committed = await world.commit(ops)
    assert committed.objects[0].version == committed.revision == 1


async def test_create_child_asserts_its_parent(world) -> None:
    parent = await world.node("corp")
    ops = nodes.plan_create_node(world.view, NodeCreate(path="corp.web"), FIXED_NOW, world.ids)
    assert isinstance(ops[0], Create)
    assert ops[0].object.parent_id == parent.id
    assert Assert(parent) in ops[1:]
    await world.commit(ops)
    child = world.get_node("corp.web")
    assert child is not None and child.parent_id == parent.id


async def test_create_keeps_attributes_and_normalises_exclude(world) -> None:
    await world.node("corp")
    created = await world.node(
        "corp.web",
        labels={"tier": "web"},
        puppet_classes={"profile::web": {"workers": 4}},
        puppet_exclude=["profile::mail", "base", "profile::mail"],
        puppet_environment="production",
        upstream="web_pool",
        port=8080,
        ip_hash=True,
    )
    assert created.labels == {"tier": "web"}
    assert created.puppet_classes == {"profile::web": {"workers": 4}}
    assert created.puppet_exclude == ["base", "profile::mail"]
    assert (created.puppet_environment, created.upstream, created.port, created.ip_hash) == (
        "production",
        "web_pool",
        8080,
        True,
    )


async def test_create_duplicate_path_is_already_exists(world) -> None:
    await world.node("corp")
    with pytest.raises(AlreadyExists) as caught:
        nodes.plan_create_node(world.view, NodeCreate(path="corp"), FIXED_NOW, world.ids)
    assert caught.value.field == "path"
    assert "'corp'" in caught.value.detail


async def test_create_under_an_unknown_parent_names_the_parent(world) -> None:
    await world.node("corp")
    with pytest.raises(NotFound) as caught:
        nodes.plan_create_node(world.view, NodeCreate(path="corp.web.api"), FIXED_NOW, world.ids)
    assert caught.value.field == "path"
    assert "'corp.web'" in caught.value.detail
    assert world.paths() == ["corp"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (NodeCreate(path="Corp"), "path"),
        (NodeCreate(path="corp..x"), "path"),
        (NodeCreate(path="corp", labels={"bad key": "v"}), "labels"),
        (NodeCreate(path="corp", labels={"k": "a;b"}), "labels"),
        (NodeCreate(path="corp", puppet_classes={"Bad": {}}), "puppet_classes"),
        (NodeCreate(path="corp", puppet_exclude=["Bad"]), "puppet_exclude"),
        (NodeCreate(path="corp", puppet_environment="prod-1"), "puppet_environment"),
        (NodeCreate(path="corp", upstream="a b"), "upstream"),
        (NodeCreate(path="corp", port=0), "port"),
        (NodeCreate(path="corp", port=65536), "port"),
    ],
)
async def test_create_refuses_invalid_input(world, request_: NodeCreate, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        nodes.plan_create_node(world.view, request_, FIXED_NOW, world.ids)
    assert caught.value.field == field


async def test_create_fails_at_commit_when_the_parent_changed_meanwhile(world) -> None:
    await world.node("corp")
    stale = nodes.plan_create_node(world.view, NodeCreate(path="corp.web"), FIXED_NOW, world.ids)
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(port=80), LATER))
    with pytest.raises(VersionConflict):
        await world.commit(stale)
    assert world.paths() == ["corp"]


async def test_create_fails_at_commit_when_the_parent_was_deleted_meanwhile(world) -> None:
    await world.node("corp")
    stale = nodes.plan_create_node(world.view, NodeCreate(path="corp.web"), FIXED_NOW, world.ids)
    await world.commit(nodes.plan_delete_node(world.view, "corp", recursive=False))
    with pytest.raises((NotFound, VersionConflict)):
        await world.commit(stale)
    assert world.paths() == []


# ---- update ---------------------------------------------------------------------------------------
async def test_update_merges_labels_and_none_removes(world) -> None:
    await world.node("corp", labels={"a": "1", "b": "2", "c": "3"})
    patch = NodeUpdate(labels={"a": "9", "b": None, "d": "4", "missing": None})
    await world.commit(nodes.plan_update_node(world.view, "corp", patch, LATER))
    updated = world.get_node("corp")
    assert updated.labels == {"a": "9", "c": "3", "d": "4"}
    assert updated.updated_at == LATER
    assert updated.created_at == FIXED_NOW


async def test_update_adds_removes_and_replaces_classes(world) -> None:
    await world.node("corp", puppet_classes={"base": {}, "profile::web": {"workers": 4, "gzip": True}})
    patch = NodeUpdate(puppet_classes={"base": None, "profile::db": {"engine": "pg"}})
    await world.commit(nodes.plan_update_node(world.view, "corp", patch, LATER))
    assert world.get_node("corp").puppet_classes == {
        "profile::db": {"engine": "pg"},
        "profile::web": {"workers": 4, "gzip": True},
    }
    patch = NodeUpdate(puppet_classes={"profile::web": {"workers": 8}})
    await world.commit(nodes.plan_update_node(world.view, "corp", patch, LATER))
    assert world.get_node("corp").puppet_classes["profile::web"] == {"workers": 8}


FULL = {"puppet_environment": "production", "upstream": "pool", "port": 8080, "ip_hash": True}


async def test_update_with_nothing_set_changes_nothing_but_the_time(world) -> None:
    before = await world.node("corp", labels={"a": "1"}, puppet_exclude=["base"], **FULL)
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(), LATER))
    after = world.get_node("corp")
    assert msgspec.structs.replace(after, updated_at=before.updated_at, version=before.version) == before


@pytest.mark.parametrize("name", ["puppet_environment", "upstream", "port", "ip_hash"])
async def test_update_tri_state_fields(world, name: str) -> None:
    await world.node("corp", **FULL)
    # absent: unchanged
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(), LATER))
    assert getattr(world.get_node("corp"), name) == FULL[name]
    # a value: set
    value = {"puppet_environment": "staging", "upstream": "other", "port": 9090, "ip_hash": False}[name]
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(**{name: value}), LATER))
    assert getattr(world.get_node("corp"), name) == value
    # null: cleared (inherit / default); the other fields are untouched
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(**{name: None}), LATER))
    node = world.get_node("corp")
    assert getattr(node, name) is None
    for other in set(FULL) - {name}:
        assert getattr(node, other) == FULL[other]


async def test_update_tri_state_from_json(world) -> None:
    await world.node("corp", **FULL)
    absent = msgspec.json.decode(b"{}", type=NodeUpdate)
    null = msgspec.json.decode(b'{"port": null}', type=NodeUpdate)
    assert absent.port is UNSET
    assert null.port is None
    await world.commit(nodes.plan_update_node(world.view, "corp", absent, LATER))
    assert world.get_node("corp").port == 8080
    await world.commit(nodes.plan_update_node(world.view, "corp", null, LATER))
    assert world.get_node("corp").port is None
    assert world.get_node("corp").upstream == "pool"


async def test_update_puppet_exclude_unset_keeps_and_empty_clears(world) -> None:
    await world.node("corp", puppet_exclude=["base"])
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(labels={"a": "1"}), LATER))
    assert world.get_node("corp").puppet_exclude == ["base"]
    patch = NodeUpdate(puppet_exclude=["x", "base", "x"])
    await world.commit(nodes.plan_update_node(world.view, "corp", patch, LATER))
    assert world.get_node("corp").puppet_exclude == ["base", "x"]
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(puppet_exclude=[]), LATER))
    assert world.get_node("corp").puppet_exclude == []


async def test_update_with_a_stale_version_is_a_conflict(world) -> None:
    node = await world.node("corp")
    await world.commit(nodes.plan_update_node(world.view, "corp", NodeUpdate(port=80), LATER))
    with pytest.raises(VersionConflict) as caught:
        nodes.plan_update_node(world.view, "corp", NodeUpdate(version=node.version, port=81), LATER)
    assert caught.value.field == "version"
    current = world.get_node("corp")
    ops = nodes.plan_update_node(world.view, "corp", NodeUpdate(version=current.version, port=81), LATER)
    await world.commit(ops)
    assert world.get_node("corp").port == 81


async def test_two_updates_planned_from_one_view_the_second_conflicts(world) -> None:
    await world.node("corp")
    view = world.view
    first = nodes.plan_update_node(view, "corp", NodeUpdate(labels={"a": "1"}), LATER)
    second = nodes.plan_update_node(view, "corp", NodeUpdate(labels={"b": "2"}), LATER)
    await world.commit(first)
    with pytest.raises(VersionConflict):
        await world.commit(second)
    assert world.get_node("corp").labels == {"a": "1"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (NodeUpdate(labels={"k": "a{b"}), "labels"),
        (NodeUpdate(puppet_classes={"Bad": {}}), "puppet_classes"),
        (NodeUpdate(puppet_classes={"profile::web": {"Bad": 1}}), "puppet_classes"),
        (NodeUpdate(puppet_exclude=["no good"]), "puppet_exclude"),
        (NodeUpdate(puppet_environment="Prod"), "puppet_environment"),
        (NodeUpdate(upstream="a;b"), "upstream"),
        (NodeUpdate(port=0), "port"),
    ],
)
async def test_update_refuses_invalid_input(world, patch: NodeUpdate, field: str) -> None:
    await world.node("corp")
    with pytest.raises(InvalidInput) as caught:
        nodes.plan_update_node(world.view, "corp", patch, LATER)
    assert caught.value.field == field


async def test_update_of_an_unknown_node_is_not_found(world) -> None:
    with pytest.raises(NotFound) as caught:
        nodes.plan_update_node(world.view, "nope", NodeUpdate(), LATER)
    assert caught.value.field == "path"


# ---- move -----------------------------------------------------------------------------------------
async def test_move_rewrites_the_subtree(world) -> None:
    created = {n.path: n for n in await world.nodes("a", "a.b", "a.b.c", "a.b.c.d", "a.e", "x")}
    ops = nodes.plan_move_node(world.view, "a.b", NodeMove(to="x.b"), LATER)
    assert Assert(created["x"]) in ops
    await world.commit(ops)
    assert world.paths() == ["a", "a.e", "x", "x.b", "x.b.c", "x.b.c.d"]
    moved = world.get_node("x.b")
    assert moved.id == created["a.b"].id
    assert moved.parent_id == created["x"].id
    assert moved.updated_at == LATER
    assert world.get_node("x.b.c").id == created["a.b.c"].id
    assert world.get_node("x.b.c").parent_id == created["a.b"].id
    assert world.get_node("x.b.c.d").parent_id == created["a.b.c"].id
    assert world.get_node("a.e").updated_at == FIXED_NOW


async def test_move_renames_a_root_and_its_subtree(world) -> None:
    await world.nodes("a", "a.b", "a.b.c", "ab")
    ops = nodes.plan_move_node(world.view, "a", NodeMove(to="z"), LATER)
    assert not any(isinstance(op, Assert) for op in ops)
    await world.commit(ops)
    assert world.paths() == ["ab", "z", "z.b", "z.b.c"]
    assert world.get_node("z").parent_id is None


async def test_move_a_child_up_to_the_root(world) -> None:
    await world.nodes("a", "a.b", "a.b.c")
    await world.commit(nodes.plan_move_node(world.view, "a.b", NodeMove(to="b"), LATER))
    assert world.paths() == ["a", "b", "b.c"]
    assert world.get_node("b").parent_id is None


async def test_move_keeps_routes_and_bindings(world) -> None:
    await world.nodes("a", "a.b", "x")
    await world.domain("shop.example.com")
    await world.route("a.b", "shop.example.com", "/api")
    await world.machine("m1")
    await world.bind("m1", "a.b")
    await world.commit(nodes.plan_move_node(world.view, "a.b", NodeMove(to="x.b"), LATER))
    moved = world.get_node("x.b")
    assert [r.uri for r in moved.domain_uris] == ["/api"]
    assert [b.node_id for b in world.view.all(Binding)] == [moved.id]


@pytest.mark.parametrize("target", ["a.b", "a.b.c.q", "a.q"])
async def test_move_under_itself_is_refused(world, target: str) -> None:
    await world.nodes("a", "a.b", "a.b.c")
    with pytest.raises(Refused) as caught:
        nodes.plan_move_node(world.view, "a", NodeMove(to=target), LATER)
    assert caught.value.field == "to"


async def test_move_onto_an_existing_node_is_already_exists(world) -> None:
    await world.nodes("a", "a.b", "x", "x.b")
    with pytest.raises(AlreadyExists) as caught:
        nodes.plan_move_node(world.view, "a.b", NodeMove(to="x.b"), LATER)
    assert caught.value.field == "to"


async def test_move_to_its_own_path_is_invalid(world) -> None:
    await world.nodes("a")
    with pytest.raises(InvalidInput) as caught:
        nodes.plan_move_node(world.view, "a", NodeMove(to="a"), LATER)
    assert caught.value.field == "to"


async def test_move_under_a_missing_parent_is_not_found(world) -> None:
    await world.nodes("a", "a.b")
    with pytest.raises(NotFound) as caught:
        nodes.plan_move_node(world.view, "a.b", NodeMove(to="nope.b"), LATER)
    assert caught.value.field == "to"
    assert "'nope'" in caught.value.detail


async def test_move_to_an_invalid_path_is_invalid(world) -> None:
    await world.nodes("a")
    with pytest.raises(InvalidInput) as caught:
        nodes.plan_move_node(world.view, "a", NodeMove(to="B"), LATER)
    assert caught.value.field == "to"


async def test_move_of_an_unknown_node_is_not_found(world) -> None:
    with pytest.raises(NotFound):
        nodes.plan_move_node(world.view, "nope", NodeMove(to="x"), LATER)


async def test_move_respects_the_depth_limit(world) -> None:
    chain = ["r" + ".n" * depth for depth in range(MAX_DEPTH - 2)]  # 30 levels
    await world.nodes(*chain, "p", "p.q", "p.q.s")
    with pytest.raises(Refused) as caught:
        nodes.plan_move_node(world.view, "r", NodeMove(to="p.q.s.r"), LATER)
    assert f"at most {MAX_DEPTH}" in caught.value.detail
    # exactly at the limit is fine
    await world.commit(nodes.plan_move_node(world.view, "r", NodeMove(to="p.q.r"), LATER))
    deepest = max(world.paths(), key=lambda p: p.count("."))
    assert deepest.count(".") + 1 == MAX_DEPTH


async def test_move_respects_the_path_length_limit_of_descendants(world) -> None:
    """Renaming a node must not give a descendant a path longer than validate_path allows."""
    segment = "x" * 60
    await world.nodes("a", f"a.{segment}", f"a.{segment}.{segment}", f"a.{segment}.{segment}.{segment}")
    await world.node("y" * 60)
    target = "y" * 60 + "." + "z" * 60  # 121 characters: valid on its own
    with pytest.raises((InvalidInput, Refused)):
        nodes.plan_move_node(world.view, "a", NodeMove(to=target), LATER)
    assert max(len(p) for p in world.paths()) <= MAX_PATH_LENGTH


async def test_move_with_a_stale_version_is_a_conflict(world) -> None:
    node = await world.node("a")
    await world.commit(nodes.plan_update_node(world.view, "a", NodeUpdate(port=1), LATER))
    with pytest.raises(VersionConflict):
        nodes.plan_move_node(world.view, "a", NodeMove(to="b", version=node.version), LATER)


async def test_move_fails_when_the_new_parent_changed_meanwhile(world) -> None:
    await world.nodes("a", "x")
    stale = nodes.plan_move_node(world.view, "a", NodeMove(to="x.a"), LATER)
    await world.commit(nodes.plan_move_node(world.view, "x", NodeMove(to="y"), LATER))
    with pytest.raises(VersionConflict):
        await world.commit(stale)
    assert world.paths() == ["a", "y"]


async def test_move_fails_when_a_child_was_created_meanwhile(world) -> None:
    """A move planned before a child was created must not leave that child under the old path."""
    await world.nodes("a")
    view = world.view
    move = nodes.plan_move_node(view, "a", NodeMove(to="z"), LATER)
    await world.commit(nodes.plan_create_node(view, NodeCreate(path="a.new"), FIXED_NOW, world.ids))
    try:
        await world.commit(move)
    except TreeherdError:
        pass
    for node in world.view.all(TreeNode):
        if node.parent_id is not None:
            parent = world.view.get(TreeNode, node.parent_id)
            assert node.path.startswith(parent.path + "."), f"{node.path!r} is under {parent.path!r}"


# ---- delete ---------------------------------------------------------------------------------------
async def test_delete_a_leaf(world) -> None:
    await world.nodes("a", "a.b")
    leaf = world.get_node("a.b")
    assert nodes.plan_delete_node(world.view, "a.b", recursive=False) == [Delete(leaf)]
    await world.commit(nodes.plan_delete_node(world.view, "a.b", recursive=False))
    assert world.paths() == ["a"]


async def test_delete_refused_with_children_counts_every_descendant(world) -> None:
    await world.nodes("a", "a.b", "a.b.c", "a.d")
    with pytest.raises(Refused) as caught:
        nodes.plan_delete_node(world.view, "a", recursive=False)
    assert "3 descendant node(s)" in caught.value.detail
    assert "recursive" in caught.value.detail


async def test_delete_refused_with_bindings_and_records(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    await world.machine("m2")
    await world.bind("m1", "a")
    await world.bind("m2", "a")
    await world.provision("new1", "a")
    with pytest.raises(Refused) as caught:
        nodes.plan_delete_node(world.view, "a", recursive=False)
    assert "2 bound machine(s)" in caught.value.detail
    assert "1 provisioning record(s)" in caught.value.detail
    assert "descendant" not in caught.value.detail


async def test_delete_refused_with_a_provisioning_record_only(world) -> None:
    await world.nodes("a")
    await world.provision("new1", "a")
    with pytest.raises(Refused, match=r"1 provisioning record\(s\)"):
        nodes.plan_delete_node(world.view, "a", recursive=False)


async def test_recursive_delete_orders_children_and_holdings_first(world) -> None:
    await world.nodes("a", "a.b", "a.b.c", "a.d", "a.d.e", "x")
    for hostname in ("m1", "m2", "m3"):
        await world.machine(hostname)
    await world.bind("m1", "a")
    await world.bind("m1", "a.b.c")
    await world.bind("m2", "a.d.e")
    await world.bind("m3", "x")
    await world.provision("new1", "a.b")
    await world.provision("new2", "a.d.e")
    ops = nodes.plan_delete_node(world.view, "a", recursive=True)
    assert all(isinstance(op, Delete) for op in ops)
    position = {op.object.id: index for index, op in enumerate(ops)}
    deleted_nodes = [op.object for op in ops if isinstance(op.object, TreeNode)]
    assert sorted(n.path for n in deleted_nodes) == ["a", "a.b", "a.b.c", "a.d", "a.d.e"]
    for op in ops:
        obj = op.object
        if isinstance(obj, TreeNode) and obj.parent_id in position:
            assert position[obj.id] < position[obj.parent_id], f"{obj.path} after its parent"
        if isinstance(obj, Binding | ProvisioningRecord):
            assert position[obj.id] < position[obj.node_id], "a holding after its node"
    assert sum(isinstance(op.object, Binding) for op in ops) == 3
    assert sum(isinstance(op.object, ProvisioningRecord) for op in ops) == 2
    committed = await world.commit(ops)
    assert len(committed.objects) == len(ops)
    assert world.paths() == ["x"]
    assert [b.node_id for b in world.view.all(Binding)] == [world.get_node("x").id]
    assert list(world.view.all(ProvisioningRecord)) == []
    assert sorted(m.hostname for m in world.view.all(Machine)) == ["m1", "m2", "m3"]


async def test_delete_with_a_stale_version_is_a_conflict(world) -> None:
    node = await world.node("a")
    await world.commit(nodes.plan_update_node(world.view, "a", NodeUpdate(port=1), LATER))
    with pytest.raises(VersionConflict):
        nodes.plan_delete_node(world.view, "a", recursive=False, version=node.version)
    current = world.get_node("a")
    await world.commit(nodes.plan_delete_node(world.view, "a", recursive=False, version=current.version))
    assert world.paths() == []


async def test_delete_of_an_unknown_node_is_not_found(world) -> None:
    with pytest.raises(NotFound):
        nodes.plan_delete_node(world.view, "nope", recursive=True)


async def test_recursive_delete_fails_when_a_child_was_created_meanwhile(world) -> None:
    await world.nodes("a")
    stale = nodes.plan_delete_node(world.view, "a", recursive=True)
    await world.node("a.b")
    with pytest.raises((Refused, VersionConflict)):
        await world.commit(stale)
    assert world.paths() == ["a", "a.b"]


# ---- routes ---------------------------------------------------------------------------------------
async def test_add_route(world) -> None:
    await world.nodes("a")
    domain = await world.domain("shop.example.com")
    ops = nodes.plan_add_route(world.view, "a", RouteSpec(domain="SHOP.example.com", uri="/api"), LATER)
    assert Assert(domain) in ops
    await world.commit(ops)
    assert world.get_node("a").domain_uris == [DomainUri(domain_id=domain.id, uri="/api")]


async def test_a_node_may_hold_several_routes(world) -> None:
    await world.nodes("a", "b")
    await world.domain("shop.example.com")
    await world.domain("api.example.com")
    await world.route("a", "shop.example.com", "/")
    await world.route("a", "shop.example.com", "/api")
    await world.route("a", "api.example.com", "/")
    await world.route("b", "shop.example.com", "/api/v2")
    assert [r.uri for r in world.get_node("a").domain_uris] == ["/", "/api", "/"]


async def test_duplicate_route_on_the_same_node(world) -> None:
    await world.nodes("a")
    await world.domain("shop.example.com")
    await world.route("a", "shop.example.com", "/api")
    with pytest.raises(AlreadyExists) as caught:
        nodes.plan_add_route(world.view, "a", RouteSpec(domain="shop.example.com", uri="/api"), LATER)
    assert caught.value.field == "uri"
    assert "this node" in caught.value.detail


async def test_duplicate_route_on_another_node_names_the_holder(world) -> None:
    await world.nodes("corp", "corp.web", "corp.api")
    await world.domain("shop.example.com")
    await world.route("corp.web", "shop.example.com", "/api")
    with pytest.raises(AlreadyExists) as caught:
        nodes.plan_add_route(world.view, "corp.api", RouteSpec(domain="shop.example.com", uri="/api"), LATER)
    assert caught.value.field == "uri"
    assert "'corp.web'" in caught.value.detail


async def test_the_same_route_planned_twice_from_one_view_is_refused_at_commit(world) -> None:
    await world.nodes("a", "b")
    await world.domain("shop.example.com")
    view = world.view
    spec = RouteSpec(domain="shop.example.com", uri="/api")
    first = nodes.plan_add_route(view, "a", spec, LATER)
    second = nodes.plan_add_route(view, "b", spec, LATER)
    await world.commit(first)
    with pytest.raises(AlreadyExists):
        await world.commit(second)
    assert world.get_node("b").domain_uris == []


async def test_add_route_to_an_unknown_domain_is_not_found(world) -> None:
    await world.nodes("a")
    with pytest.raises(NotFound) as caught:
        nodes.plan_add_route(world.view, "a", RouteSpec(domain="nope.example.com", uri="/"), LATER)
    assert caught.value.field == "domain"


@pytest.mark.parametrize("uri", ["api", "", "/a b", "/a;", "/a{"])
async def test_add_route_with_an_invalid_uri(world, uri: str) -> None:
    await world.nodes("a")
    await world.domain("shop.example.com")
    with pytest.raises(InvalidInput) as caught:
        nodes.plan_add_route(world.view, "a", RouteSpec(domain="shop.example.com", uri=uri), LATER)
    assert caught.value.field == "uri"


async def test_remove_route(world) -> None:
    await world.nodes("a")
    domain = await world.domain("shop.example.com")
    await world.route("a", "shop.example.com", "/api")
    await world.route("a", "shop.example.com", "/web")
    spec = RouteSpec(domain="shop.example.com", uri="/api")
    await world.commit(nodes.plan_remove_route(world.view, "a", spec, LATER))
    assert world.get_node("a").domain_uris == [DomainUri(domain_id=domain.id, uri="/web")]
    with pytest.raises(NotFound) as caught:
        nodes.plan_remove_route(world.view, "a", spec, LATER)
    assert caught.value.field == "uri"


async def test_remove_a_route_held_by_another_node_is_not_found(world) -> None:
    await world.nodes("a", "b")
    await world.domain("shop.example.com")
    await world.route("a", "shop.example.com", "/api")
    with pytest.raises(NotFound):
        nodes.plan_remove_route(world.view, "b", RouteSpec(domain="shop.example.com", uri="/api"), LATER)
