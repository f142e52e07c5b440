"""The class catalog: no checks before a sync, refusals after it, syncs that would strand nodes."""

from __future__ import annotations

import pytest
from tests.core.conftest import World

from treeherd.core.cluster import current_settings, plan_update_cluster
from treeherd.core.puppet.puppet import catalog_of, plan_sync_catalog
from treeherd.core.tree import nodes
from treeherd.model.errors import InvalidInput, Refused, VersionConflict
from treeherd.model.ops import Assert, Create, Update
from treeherd.model.puppet import CatalogSync, PuppetClass, PuppetParam
from treeherd.model.requests import ClusterUpdate, NodeCreate, NodeUpdate

CLASSES = [
    PuppetClass(name="base"),
    PuppetClass(name="profile::web", parent="base", params=[PuppetParam(name="workers", default="4")]),
    PuppetClass(name="legacy", params_known=False),
]


async def _sync(world: World, classes: list[PuppetClass], *, force: bool = False) -> None:
    settings = current_settings(world.view, world.now)
    ops, _ = plan_sync_catalog(
        world.view, CatalogSync(classes=classes, force=force), settings, world.now, world.ids
    )
    await world.commit(ops)


async def test_before_any_sync_every_well_formed_class_is_accepted(world: World) -> None:
    node = await world.node("corp", puppet_classes={"anything::goes": {"x": 1}})
    assert node.puppet_classes == {"anything::goes": {"x": 1}}


async def test_after_a_sync_unknown_classes_and_parameters_are_refused(world: World) -> None:
    await world.node("corp")
    await _sync(world, CLASSES)
    revision = world.view.revision
    with pytest.raises(InvalidInput, match="'profile::db' is not in the class catalog"):
        nodes.plan_create_node(
            world.view, NodeCreate(path="corp.db", puppet_classes={"profile::db": {}}), world.now, world.ids
        )
    with pytest.raises(
        InvalidInput, match=r"class profile::web declares no parameter 'threads' \(it declares: workers\)"
    ):
        nodes.plan_update_node(
            world.view, "corp", NodeUpdate(puppet_classes={"profile::web": {"threads": 2}}), world.now
        )
    assert world.view.revision == revision
    ops = nodes.plan_update_node(
        world.view,
        "corp",
        NodeUpdate(puppet_classes={"profile::web": {"workers": 2}, "legacy": {"any": 1}}),
        world.now,
    )
    assert isinstance(ops[0], Update)
    assert any(isinstance(op, Assert) and op.object.kind == "puppet_catalog" for op in ops)
    await world.commit(ops)
    # Removing a class is never checked.
    await world.commit(
        nodes.plan_update_node(world.view, "corp", NodeUpdate(puppet_classes={"gone": None}), world.now)
    )


async def test_a_sync_that_strands_a_node_is_refused_unless_forced(world: World) -> None:
    await _sync(world, CLASSES)
    await world.node("corp", puppet_classes={"profile::web": {"workers": 2}})
    await world.node("corp.x", puppet_classes={"legacy": {}})
    settings = current_settings(world.view, world.now)
    shrunk = [PuppetClass(name="base"), PuppetClass(name="profile::web")]
    with pytest.raises(Refused) as caught:
        plan_sync_catalog(world.view, CatalogSync(classes=shrunk), settings, world.now, world.ids)
    assert "corp (class profile::web declares no parameter 'workers'" in caught.value.detail
    assert "corp.x (Puppet class 'legacy' is not in the class catalog)" in caught.value.detail
    assert "--force" in caught.value.detail
    ops, change = plan_sync_catalog(
        world.view, CatalogSync(classes=shrunk, force=True), settings, world.now, world.ids
    )
    assert change.removed == ["legacy"]
    assert change.changed == ["profile::web"]
    assert len(change.stale) == 2
    assert isinstance(ops[0], Update)


async def test_a_sync_reports_changes_and_a_same_sync_writes_nothing(world: World) -> None:
    settings = current_settings(world.view, world.now)
    ops, change = plan_sync_catalog(world.view, CatalogSync(classes=CLASSES), settings, world.now, world.ids)
    assert isinstance(ops[0], Create)
    assert change.added == ["base", "legacy", "profile::web"]
    await world.commit(ops)
    again, change = plan_sync_catalog(
        world.view, CatalogSync(classes=list(reversed(CLASSES))), settings, world.now, world.ids
    )
    assert again == []
    assert (change.added, change.removed, change.changed) == ([], [], [])
    catalog = catalog_of(world.view)
    assert catalog is not None and [c.name for c in catalog.classes] == ["base", "legacy", "profile::web"]


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "has no classes"),
        ([PuppetClass(name="Bad")], "invalid Puppet class name"),
        ([PuppetClass(name="a"), PuppetClass(name="a")], "listed twice"),
        (
            [PuppetClass(name="a", params=[PuppetParam(name="x"), PuppetParam(name="x")])],
            "declares a parameter twice",
        ),
        ([PuppetClass(name="a", params=[PuppetParam(name="X-y")])], "invalid parameter name"),
        ([PuppetClass(name="a", parent="B")], "invalid Puppet class name"),
    ],
)
async def test_bad_catalogs_are_refused(world: World, classes: list[PuppetClass], message: str) -> None:
    settings = current_settings(world.view, world.now)
    with pytest.raises(InvalidInput, match=message):
        plan_sync_catalog(world.view, CatalogSync(classes=classes), settings, world.now, world.ids)


async def test_the_default_class_must_be_in_the_catalog(world: World) -> None:
    await world.commit(
        plan_update_cluster(world.view, ClusterUpdate(puppet_default_class="base"), world.now, world.ids)
    )
    await _sync(world, CLASSES)
    with pytest.raises(InvalidInput, match="'nope' is not in the class catalog"):
        plan_update_cluster(world.view, ClusterUpdate(puppet_default_class="nope"), world.now, world.ids)
    with pytest.raises(InvalidInput, match="invalid Puppet class name"):
        plan_update_cluster(world.view, ClusterUpdate(puppet_default_class="No Way"), world.now, world.ids)
    settings = current_settings(world.view, world.now)
    with pytest.raises(Refused, match="the cluster's default class 'base'"):
        plan_sync_catalog(
            world.view, CatalogSync(classes=[PuppetClass(name="other")]), settings, world.now, world.ids
        )
    await world.commit(
        plan_update_cluster(
            world.view,
            ClusterUpdate(puppet_default_class="", puppet_unknown_host="default"),
            world.now,
            world.ids,
        )
    )
    settings = current_settings(world.view, world.now)
    assert (settings.puppet_default_class, settings.puppet_unknown_host) == (None, "default")


async def test_racing_plans_never_leave_a_node_with_a_dropped_class(world: World) -> None:
    await _sync(world, CLASSES)
    await world.node("corp")
    settings = current_settings(world.view, world.now)
    shrunk = [PuppetClass(name="base")]
    # A sync planned first, a node update committed before it: the sync fails and is planned again.
    sync_ops, _ = plan_sync_catalog(world.view, CatalogSync(classes=shrunk), settings, world.now, world.ids)
    await world.commit(
        nodes.plan_update_node(world.view, "corp", NodeUpdate(puppet_classes={"legacy": {}}), world.now)
    )
    with pytest.raises(VersionConflict):
        await world.commit(sync_ops)
    with pytest.raises(Refused, match="corp"):
        plan_sync_catalog(world.view, CatalogSync(classes=shrunk), settings, world.now, world.ids)
    # A node update planned first, a sync committed before it: the update fails and is planned again.
    await world.commit(
        nodes.plan_update_node(world.view, "corp", NodeUpdate(puppet_classes={"legacy": None}), world.now)
    )
    update_ops = nodes.plan_update_node(
        world.view, "corp", NodeUpdate(puppet_classes={"profile::web": {}}), world.now
    )
    await _sync(world, shrunk)
    with pytest.raises(VersionConflict, match="puppet_catalog"):
        await world.commit(update_ops)
    with pytest.raises(InvalidInput, match="not in the class catalog"):
        nodes.plan_update_node(world.view, "corp", NodeUpdate(puppet_classes={"profile::web": {}}), world.now)
