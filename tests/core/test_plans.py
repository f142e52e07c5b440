"""The plans of core/tree/nodes.py and core/tree/inventory.py, called directly against a MemoryStore's view.

State is built by committing what the plans return (see `World` in conftest.py), so every test also
checks that the operations a plan makes are ones the store accepts.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from msgspec import UNSET

from treeherd.core.tree import inventory as inv
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
from treeherd.model.objects import Binding, DomainPort, DomainUri, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete, Update
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    DomainUpdate,
    MachineCreate,
    MachineUpdate,
    NodeCreate,
    NodeMove,
    NodeUpdate,
    ProvisionCreate,
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


# ---- machines -------------------------------------------------------------------------------------
async def test_create_machine_normalises(world) -> None:
    request = MachineCreate(
        hostname="Web1.Example.COM",
        ips=["10.0.0.1", "2001:DB8::1", "10.0.0.1"],
        machine_kind="physical",
        labels={"z": "1", "a": "2"},
        cpus=4.5,
        memory_bytes=1 << 30,
    )
    await world.commit(inv.plan_create_machine(world.view, request, FIXED_NOW, world.ids))
    machine = world.get_machine("web1.example.com")
    assert machine is not None
    assert machine.ips == ["10.0.0.1", "2001:db8::1"]
    assert machine.machine_kind == "physical"
    assert list(machine.labels) == ["a", "z"]
    assert (machine.cpus, machine.memory_bytes) == (4.5, 1 << 30)
    assert inv.machine_by_hostname(world.view, " WEB1.example.com ").id == machine.id


async def test_duplicate_hostname_differing_in_case(world) -> None:
    await world.machine("web1.example.com")
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_machine(world.view, MachineCreate(hostname="WEB1.Example.com"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (MachineCreate(hostname="bad host"), "hostname"),
        (MachineCreate(hostname="m", ips=["10.0.0.300"]), "ips"),
        (MachineCreate(hostname="m", ips=["10.0.0.1", "nope"]), "ips"),
        (MachineCreate(hostname="m", cpus=-1), "cpus"),
        (MachineCreate(hostname="m", memory_bytes=-1), "memory_bytes"),
        (MachineCreate(hostname="m", labels={"k": "a;b"}), "labels"),
    ],
)
async def test_create_machine_refuses_invalid_input(world, request_: MachineCreate, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_machine(world.view, request_, FIXED_NOW, world.ids)
    assert caught.value.field == field


async def test_update_machine(world) -> None:
    await world.machine("m1", labels={"a": "1", "b": "2"}, ips=["10.0.0.1"], cpus=1)
    patch = MachineUpdate(labels={"a": None, "c": "3"}, ips=["10.0.0.2"], cpus=2, memory_bytes=5)
    await world.commit(inv.plan_update_machine(world.view, "M1", patch, LATER))
    machine = world.get_machine("m1")
    assert machine.labels == {"b": "2", "c": "3"}
    assert machine.ips == ["10.0.0.2"]
    assert (machine.cpus, machine.memory_bytes) == (2, 5)
    assert machine.updated_at == LATER


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (MachineUpdate(cpus=-1), "cpus"),
        (MachineUpdate(memory_bytes=-5), "memory_bytes"),
        (MachineUpdate(ips=["x"]), "ips"),
        (MachineUpdate(labels={"bad key": "v"}), "labels"),
        (MachineUpdate(version=999), "version"),
    ],
)
async def test_update_machine_refuses(world, patch: MachineUpdate, field: str) -> None:
    await world.machine("m1")
    with pytest.raises((InvalidInput, VersionConflict)) as caught:
        inv.plan_update_machine(world.view, "m1", patch, LATER)
    assert caught.value.field == field


async def test_unknown_machine_is_not_found(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_update_machine(world.view, "nope", MachineUpdate(), LATER)
    assert caught.value.field == "hostname"


# ---- bindings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [0, 1, 256])
async def test_bind_accepts_weights_in_range(world, weight: int) -> None:
    await world.nodes("a")
    await world.machine("m1")
    binding = await world.bind("m1", "a", weight=weight)
    assert binding.weight == weight


@pytest.mark.parametrize("weight", [-1, 257, 300])
async def test_bind_refuses_weights_out_of_range(world, weight: int) -> None:
    await world.nodes("a")
    await world.machine("m1")
    with pytest.raises(InvalidInput) as caught:
        inv.plan_bind(world.view, "m1", BindRequest(node="a", weight=weight), FIXED_NOW, world.ids)
    assert caught.value.field == "weight"


async def test_bind_asserts_the_machine(world) -> None:
    await world.nodes("a")
    machine = await world.machine("m1")
    ops = inv.plan_bind(world.view, "m1", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert isinstance(ops[0], Create)
    assert Assert(machine) in ops


async def test_binding_again_changes_the_weight(world) -> None:
    await world.nodes("a")
    machine = await world.machine("m1")
    first = await world.bind("m1", "a", weight=1)
    ops = inv.plan_bind(world.view, "m1", BindRequest(node="a", weight=7), LATER, world.ids)
    assert isinstance(ops[0], Update)
    assert Assert(machine) in ops
    await world.commit(ops)
    bindings = list(world.view.all(Binding))
    assert [(b.id, b.weight) for b in bindings] == [(first.id, 7)]
    assert bindings[0].created_at == FIXED_NOW
    assert bindings[0].updated_at == LATER


async def test_a_machine_may_be_bound_to_several_nodes(world) -> None:
    await world.nodes("a", "b")
    await world.machine("m1")
    await world.bind("m1", "a")
    await world.bind("m1", "b", weight=3)
    assert sorted((b.node_id, b.weight) for b in world.view.all(Binding)) == sorted(
        [(world.get_node("a").id, 1), (world.get_node("b").id, 3)]
    )


@pytest.mark.parametrize(("held", "new"), [("virtual", "physical"), ("physical", "virtual")])
async def test_bind_never_mixes_machine_kinds(world, held: str, new: str) -> None:
    await world.nodes("a")
    await world.machine("held1", kind=held)
    await world.machine("new1", kind=new)
    await world.bind("held1", "a")
    with pytest.raises(Refused) as caught:
        inv.plan_bind(world.view, "new1", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "node"
    assert held in caught.value.detail
    assert "'held1'" in caught.value.detail


async def test_bind_transaction_does_not_grow_with_the_node(world) -> None:
    """The store checks the one-kind-per-node invariant itself, so a bind writes only its binding and
    asserts its machine, however many machines the node already holds."""
    await world.nodes("a")
    for index in range(20):
        await world.machine(f"m{index}")
        await world.bind(f"m{index}", "a")
    await world.machine("new")
    ops = inv.plan_bind(world.view, "new", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert [type(op) for op in ops] == [Create, Assert]
    await world.commit(ops)
    assert world.view.count(Binding) == 21


async def test_bind_unknown_machine_or_node(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    with pytest.raises(NotFound) as caught:
        inv.plan_bind(world.view, "nope", BindRequest(node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"
    with pytest.raises(NotFound) as caught:
        inv.plan_bind(world.view, "m1", BindRequest(node="nope"), FIXED_NOW, world.ids)
    assert caught.value.field == "node"


async def test_unbind(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    binding = await world.bind("m1", "a")
    assert inv.plan_unbind(world.view, "m1", "a") == [Delete(binding)]
    await world.commit(inv.plan_unbind(world.view, "m1", "a"))
    assert world.view.count(Binding) == 0
    with pytest.raises(NotFound) as caught:
        inv.plan_unbind(world.view, "m1", "a")
    assert caught.value.field == "node"


async def test_changing_a_machine_kind_that_would_mix_a_node_is_refused(world) -> None:
    await world.nodes("a", "b")
    await world.machine("v1")
    await world.machine("v2")
    await world.bind("v1", "a")
    await world.bind("v2", "a")
    await world.bind("v1", "b")
    with pytest.raises(Refused) as caught:
        inv.plan_update_machine(world.view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    assert caught.value.field == "node"
    assert "'a'" in caught.value.detail
    assert world.get_machine("v1").machine_kind == "virtual"


async def test_changing_the_kind_of_a_machine_alone_in_its_nodes_is_fine(world) -> None:
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("free")
    await world.bind("v1", "a")
    await world.commit(
        inv.plan_update_machine(world.view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    )
    await world.commit(
        inv.plan_update_machine(world.view, "free", MachineUpdate(machine_kind="physical"), LATER)
    )
    assert {m.machine_kind for m in world.view.all(Machine)} == {"physical"}


async def test_delete_machine_refused_while_bound_unless_forced(world) -> None:
    await world.nodes("a", "b")
    await world.machine("m1")
    await world.bind("m1", "a")
    await world.bind("m1", "b")
    with pytest.raises(Refused) as caught:
        inv.plan_delete_machine(world.view, "m1", force=False)
    assert "a, b" in caught.value.detail
    ops = inv.plan_delete_machine(world.view, "m1", force=True)
    assert [type(op.object) for op in ops] == [Binding, Binding, Machine]
    await world.commit(ops)
    assert world.view.count(Machine) == 0
    assert world.view.count(Binding) == 0


async def test_delete_unbound_machine(world) -> None:
    machine = await world.machine("m1")
    assert inv.plan_delete_machine(world.view, "m1", force=False) == [Delete(machine)]
    with pytest.raises(VersionConflict):
        inv.plan_delete_machine(world.view, "m1", force=False, version=machine.version + 1)


# ---- concurrency: plans from the same view -----------------------------------------------------------
async def test_physical_and_virtual_bound_concurrently_to_an_empty_node(world) -> None:
    """Two binds planned from one view: the second may not mix kinds in the (then) occupied node."""
    await world.nodes("a")
    await world.machine("p1", kind="physical")
    await world.machine("v1", kind="virtual")
    view = world.view
    first = inv.plan_bind(view, "p1", BindRequest(node="a"), FIXED_NOW, world.ids)
    second = inv.plan_bind(view, "v1", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(first)
    with pytest.raises((VersionConflict, Refused)):
        await world.commit(second)
    kinds = {world.view.get(Machine, b.machine_id).machine_kind for b in world.view.all(Binding)}
    assert kinds == {"physical"}


async def test_kind_change_and_bind_planned_concurrently_never_mix(world) -> None:
    """A bind guarded by a co-bound machine's kind fails if that machine's kind changed meanwhile."""
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("v2")
    await world.bind("v1", "a")
    view = world.view
    change = inv.plan_update_machine(view, "v1", MachineUpdate(machine_kind="physical"), LATER)
    bind = inv.plan_bind(view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(change)
    with pytest.raises((VersionConflict, Refused)):
        await world.commit(bind)
    kinds = {world.view.get(Machine, b.machine_id).machine_kind for b in world.view.all(Binding)}
    assert len(kinds) == 1


async def test_two_binds_of_the_same_kind_planned_concurrently_both_apply(world) -> None:
    await world.nodes("a")
    await world.machine("v1")
    await world.machine("v2")
    view = world.view
    first = inv.plan_bind(view, "v1", BindRequest(node="a"), FIXED_NOW, world.ids)
    second = inv.plan_bind(view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids)
    await world.commit(first)
    try:
        await world.commit(second)
    except VersionConflict:
        # a retry from the new state must then succeed
        await world.commit(inv.plan_bind(world.view, "v2", BindRequest(node="a"), FIXED_NOW, world.ids))
    assert world.view.count(Binding) == 2


async def test_delete_machine_fails_when_it_was_bound_meanwhile(world) -> None:
    await world.nodes("a")
    await world.machine("m1")
    stale = inv.plan_delete_machine(world.view, "m1", force=True)
    await world.bind("m1", "a")
    with pytest.raises((Refused, VersionConflict)):
        await world.commit(stale)
    assert world.view.count(Machine) == 1


# ---- domains --------------------------------------------------------------------------------------
async def test_create_domain_defaults_and_sorting(world) -> None:
    request = DomainCreate(name="Shop.Example.com", ports=[DomainPort(port=8080), DomainPort(port=80)])
    await world.commit(inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids))
    domain = world.get_domain("shop.example.com")
    assert domain is not None
    assert domain.access_log_path == "shop.example.com_access.log"
    assert domain.error_log_path == "shop.example.com_error.log"
    assert [p.port for p in domain.ports] == [80, 8080]
    assert (domain.ssl_cert_path, domain.ssl_key_path) == (None, None)


async def test_create_domain_keeps_given_log_paths(world) -> None:
    domain = await world.domain(
        "shop.example.com", access_log_path="/var/log/a.log", error_log_path="/var/log/e.log"
    )
    assert (domain.access_log_path, domain.error_log_path) == ("/var/log/a.log", "/var/log/e.log")


async def test_wildcard_domain_log_paths(world) -> None:
    domain = await world.domain("*.example.com")
    assert domain.name == "*.example.com"
    assert "*" not in domain.access_log_path
    assert domain.access_log_path.endswith(".example.com_access.log")
    assert domain.error_log_path.endswith(".example.com_error.log")


@pytest.mark.parametrize(
    ("cert", "key", "field", "named"),
    [
        (None, None, "ssl_cert_path", ["ssl_cert_path", "ssl_key_path"]),
        ("/etc/ssl/c.pem", None, "ssl_key_path", ["ssl_key_path"]),
        (None, "/etc/ssl/k.pem", "ssl_cert_path", ["ssl_cert_path"]),
        ("", "", "ssl_cert_path", ["ssl_cert_path", "ssl_key_path"]),
    ],
)
async def test_ssl_port_needs_cert_and_key(
    world, cert: str | None, key: str | None, field: str, named: list[str]
) -> None:
    request = DomainCreate(
        name="shop.example.com",
        ports=[DomainPort(port=80), DomainPort(port=443, ssl=True)],
        ssl_cert_path=cert,
        ssl_key_path=key,
    )
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids)
    assert caught.value.field == field
    for name in named:
        assert name in caught.value.detail
    assert "443" in caught.value.detail


async def test_ssl_port_with_cert_and_key(world) -> None:
    request = DomainCreate(
        name="shop.example.com",
        ports=[DomainPort(port=443, ssl=True)],
        ssl_cert_path="/etc/ssl/c.pem",
        ssl_key_path="/etc/ssl/k.pem",
    )
    await world.commit(inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids))
    assert world.get_domain("shop.example.com").ports == [DomainPort(port=443, ssl=True)]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (DomainCreate(name="a.example.com", ports=[]), "ports"),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80), DomainPort(port=80, ssl=True)]),
            "ports",
        ),
        (DomainCreate(name="a.example.com", ports=[DomainPort(port=0)]), "ports"),
        (DomainCreate(name="a.example.com", ports=[DomainPort(port=70000)]), "ports"),
        (DomainCreate(name="bad name", ports=[DomainPort(port=80)]), "name"),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80)], access_log_path="a b"),
            "access_log_path",
        ),
        (
            DomainCreate(name="a.example.com", ports=[DomainPort(port=80)], error_log_path="a;b"),
            "error_log_path",
        ),
        (
            DomainCreate(
                name="a.example.com",
                ports=[DomainPort(port=443, ssl=True)],
                ssl_cert_path="/c.pem\n",
                ssl_key_path="/k.pem",
            ),
            "ssl_cert_path",
        ),
    ],
)
async def test_create_domain_refuses_invalid_input(world, request_: DomainCreate, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_domain(world.view, request_, FIXED_NOW, world.ids)
    assert caught.value.field == field


async def test_duplicate_domain_name(world) -> None:
    await world.domain("shop.example.com")
    request = DomainCreate(name="SHOP.example.com", ports=[DomainPort(port=80)])
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_domain(world.view, request, FIXED_NOW, world.ids)
    assert caught.value.field == "name"


async def test_update_domain(world) -> None:
    await world.domain("shop.example.com", access_log_path="/var/log/a.log")
    patch = DomainUpdate(
        ports=[DomainPort(port=443, ssl=True), DomainPort(port=80)],
        ssl_cert_path="/etc/ssl/c.pem",
        ssl_key_path="/etc/ssl/k.pem",
        access_log_path=None,
    )
    await world.commit(inv.plan_update_domain(world.view, "shop.example.com", patch, LATER))
    domain = world.get_domain("shop.example.com")
    assert [p.port for p in domain.ports] == [80, 443]
    assert domain.access_log_path == "shop.example.com_access.log"
    # dropping the key while an ssl port remains is refused
    with pytest.raises(InvalidInput) as caught:
        inv.plan_update_domain(world.view, "shop.example.com", DomainUpdate(ssl_key_path=None), LATER)
    assert caught.value.field == "ssl_key_path"
    # dropping the ssl port and the key together is fine
    patch = DomainUpdate(ports=[DomainPort(port=80)], ssl_key_path=None, ssl_cert_path=None)
    await world.commit(inv.plan_update_domain(world.view, "shop.example.com", patch, LATER))
    assert world.get_domain("shop.example.com").ssl_key_path is None


async def test_delete_domain_refused_while_routes_use_it(world) -> None:
    await world.nodes("corp", "corp.web", "corp.api")
    await world.domain("shop.example.com")
    await world.route("corp.web", "shop.example.com", "/")
    await world.route("corp.api", "shop.example.com", "/api")
    with pytest.raises(Refused) as caught:
        inv.plan_delete_domain(world.view, "shop.example.com")
    assert "corp.api, corp.web" in caught.value.detail
    for path, uri in (("corp.web", "/"), ("corp.api", "/api")):
        spec = RouteSpec(domain="shop.example.com", uri=uri)
        await world.commit(nodes.plan_remove_route(world.view, path, spec, LATER))
    await world.commit(inv.plan_delete_domain(world.view, "shop.example.com"))
    assert world.get_domain("shop.example.com") is None


async def test_delete_unknown_domain(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_delete_domain(world.view, "nope.example.com")
    assert caught.value.field == "name"


# ---- provisioning ---------------------------------------------------------------------------------
async def test_create_provision_asserts_the_node(world) -> None:
    node = await world.node("a")
    ops = inv.plan_create_provision(
        world.view, ProvisionCreate(hostname="New1", node="a"), FIXED_NOW, world.ids
    )
    assert Assert(node) in ops
    await world.commit(ops)
    record = world.view.lookup(ProvisioningRecord, "hostname", "new1")
    assert record is not None and record.node_id == node.id


async def test_duplicate_provision_hostname_names_the_node(world) -> None:
    await world.nodes("a", "b")
    await world.provision("new1", "a")
    with pytest.raises(AlreadyExists) as caught:
        inv.plan_create_provision(
            world.view, ProvisionCreate(hostname="NEW1", node="b"), FIXED_NOW, world.ids
        )
    assert caught.value.field == "hostname"
    assert "'a'" in caught.value.detail


async def test_provision_for_an_unknown_node(world) -> None:
    with pytest.raises(NotFound) as caught:
        inv.plan_create_provision(
            world.view, ProvisionCreate(hostname="new1", node="nope"), FIXED_NOW, world.ids
        )
    assert caught.value.field == "node"


async def test_provision_with_an_invalid_hostname(world) -> None:
    await world.nodes("a")
    with pytest.raises(InvalidInput) as caught:
        inv.plan_create_provision(world.view, ProvisionCreate(hostname="a b", node="a"), FIXED_NOW, world.ids)
    assert caught.value.field == "hostname"


async def test_delete_provision(world) -> None:
    await world.nodes("a")
    record = await world.provision("new1", "a")
    assert inv.plan_delete_provision(world.view, "NEW1") == [Delete(record)]
    await world.commit(inv.plan_delete_provision(world.view, "new1"))
    with pytest.raises(NotFound) as caught:
        inv.plan_delete_provision(world.view, "new1")
    assert caught.value.field == "hostname"
