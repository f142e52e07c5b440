"""The ENC decision: bound, inherited, conflicting, being provisioned and unknown hosts; conflict records."""

from __future__ import annotations

import pytest
from tests.core.conftest import World

from treeherd.core.puppet.enc import classify, conflict_ops
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.puppet import PuppetConflict
from treeherd.model.services import ClusterSettings
from treeherd.testing.factories import FIXED_NOW, Ids

SETTINGS = ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW, puppet_default_class="base")


async def _tree(world: World) -> None:
    await world.node("corp", puppet_classes={"base": {}}, puppet_environment="production")
    await world.node("corp.web", puppet_classes={"profile::web": {"workers": 4}}, labels={"tier": "web"})
    await world.node("corp.web.api", puppet_classes={"profile::web": {"workers": 8}})
    await world.node("corp.db", puppet_classes={"profile::db": {}}, puppet_exclude=["base"])
    await world.node("corp.batch", puppet_environment="batch")


async def test_a_bound_host_gets_its_nodes_classes_and_facts(world: World) -> None:
    await _tree(world)
    await world.machine("web-1", kind="physical", labels={"rack": "a"}, ips=["10.0.0.1"])
    await world.bind("web-1", "corp.web")
    answer = classify(world.view, "WEB-1.", SETTINGS)
    assert answer.hostname == "web-1"
    assert answer.source == "bound"
    assert answer.classes == {"base": {}, "profile::web": {"workers": 4}}
    assert answer.environment == "production"
    assert answer.parameters == {
        "treeherd_nodes": ["corp.web"],
        "treeherd_source": "bound",
        "treeherd_hostname": "web-1",
        "treeherd_kind": "physical",
        "treeherd_labels": {"rack": "a"},
        "treeherd_ips": ["10.0.0.1"],
    }


async def test_inheritance_override_and_exclusion(world: World) -> None:
    await _tree(world)
    for host, path in (("api-1", "corp.web.api"), ("db-1", "corp.db")):
        await world.machine(host)
        await world.bind(host, path)
    assert classify(world.view, "api-1", SETTINGS).classes == {"base": {}, "profile::web": {"workers": 8}}
    db = classify(world.view, "db-1", SETTINGS)
    assert db.classes == {"profile::db": {}}
    assert db.environment == "production"


async def test_several_nodes_that_agree_are_no_conflict(world: World) -> None:
    await _tree(world)
    await world.node("corp.web.www", puppet_classes={"profile::web": {"workers": 4}})
    await world.machine("web-2")
    await world.bind("web-2", "corp.web")
    await world.bind("web-2", "corp.web.www")
    answer = classify(world.view, "web-2", SETTINGS)
    assert answer.source == "bound"
    assert answer.parameters["treeherd_nodes"] == ["corp.web", "corp.web.www"]


async def test_a_conflict_gets_only_the_default_class(world: World) -> None:
    await _tree(world)
    await world.machine("mixed-1")
    await world.bind("mixed-1", "corp.web")
    await world.bind("mixed-1", "corp.db")
    answer = classify(world.view, "mixed-1", SETTINGS)
    assert answer.source == "conflict"
    assert answer.classes == {"base": {}}
    assert answer.parameters["treeherd_conflict"] == ["corp.db", "corp.web"]
    assert "classes differ" in str(answer.parameters["treeherd_conflict_reason"])
    assert answer.environment == "production"  # both nodes agree on it
    no_default = ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW)
    assert classify(world.view, "mixed-1", no_default).classes == {}


async def test_nodes_that_differ_only_in_environment_conflict(world: World) -> None:
    await _tree(world)
    await world.node(
        "corp.web2", puppet_classes={"profile::web": {"workers": 4}}, puppet_environment="staging"
    )
    await world.machine("env-1")
    await world.bind("env-1", "corp.web")
    await world.bind("env-1", "corp.web2")
    answer = classify(world.view, "env-1", SETTINGS)
    assert answer.source == "conflict"
    assert answer.environment is None
    assert "environments differ" in str(answer.parameters["treeherd_conflict_reason"])


async def test_a_host_being_installed_gets_its_intended_node(world: World) -> None:
    await _tree(world)
    await world.provision("new-1", "corp.web.api")
    answer = classify(world.view, "new-1", SETTINGS)
    assert answer.source == "provisioning"
    assert answer.classes == {"base": {}, "profile::web": {"workers": 8}}
    assert answer.parameters == {"treeherd_nodes": ["corp.web.api"], "treeherd_source": "provisioning"}
    # A binding wins over a stale record.
    await world.machine("new-1")
    await world.bind("new-1", "corp.db")
    assert classify(world.view, "new-1", SETTINGS).classes == {"profile::db": {}}


async def test_unknown_hosts_fail_or_get_the_default(world: World) -> None:
    await _tree(world)
    await world.machine("idle-1")
    with pytest.raises(NotFound, match="not in the inventory"):
        classify(world.view, "ghost", SETTINGS)
    with pytest.raises(NotFound, match="bound to no node"):
        classify(world.view, "idle-1", SETTINGS)
    answer = classify(world.view, "ghost", SETTINGS, "default")
    assert (answer.source, answer.classes, answer.environment) == ("default", {"base": {}}, None)
    by_policy = ClusterSettings(
        id="c",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        puppet_default_class="base",
        puppet_unknown_host="default",
    )
    assert classify(world.view, "ghost", by_policy).source == "default"
    with pytest.raises(NotFound):
        classify(world.view, "ghost", by_policy, "fail")
    with pytest.raises(InvalidInput, match="invalid hostname"):
        classify(world.view, "bad host!", SETTINGS)


async def test_conflict_records_follow_the_answers(world: World) -> None:
    await _tree(world)
    await world.machine("mixed-1")
    await world.bind("mixed-1", "corp.web")
    await world.bind("mixed-1", "corp.db")
    ids = Ids("conflict")
    answer = classify(world.view, "mixed-1", SETTINGS)
    [create] = conflict_ops(world.view, "mixed-1", answer, FIXED_NOW, ids)
    assert isinstance(create, Create)
    await world.commit([create])
    assert conflict_ops(world.view, "mixed-1", answer, FIXED_NOW, ids) == []  # unchanged: no write
    await world.bind("mixed-1", "corp.batch")
    changed = classify(world.view, "mixed-1", SETTINGS)
    [update] = conflict_ops(world.view, "mixed-1", changed, FIXED_NOW, ids)
    assert isinstance(update, Update)
    assert isinstance(update.object, PuppetConflict)
    assert update.object.nodes == ["corp.batch", "corp.db", "corp.web"]
    await world.commit([update])
    [delete] = conflict_ops(world.view, "mixed-1", None, FIXED_NOW, ids)
    assert isinstance(delete, Delete)
    assert conflict_ops(world.view, "nobody", None, FIXED_NOW, ids) == []
