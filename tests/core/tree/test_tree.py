"""Tree paths and inheritance: path rules, `resolve()` with its sources, and subtree walks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.tree.tree import (
    DEFAULT_SOURCE,
    MAX_DEPTH,
    MAX_PATH_LENGTH,
    ancestors,
    default_upstream,
    descendants,
    parent_path,
    resolve,
    resolved_classes,
    validate_path,
)
from treeherd.model.errors import InvalidInput
from treeherd.model.objects import TreeNode
from treeherd.model.ops import Create
from treeherd.model.views import ResolvedNode, Sourced, SourcedClass
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import node


def chain(*specs: tuple[str, dict[str, Any]]) -> list[TreeNode]:
    """Nodes root first, each the parent of the next (ids = paths, for readable failures)."""
    built: list[TreeNode] = []
    for path, fields in specs:
        parent_id = built[-1].id if built else None
        built.append(node(path, parent_id=parent_id, id=path, **fields))
    return built


def resolve_chain(nodes: list[TreeNode]) -> ResolvedNode:
    return resolve(nodes[-1], nodes[:-1])


# ---- validate_path ---------------------------------------------------------------------------------
DEEPEST = ".".join(["a"] * MAX_DEPTH)
LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters, 4 levels


@pytest.mark.parametrize(
    "path",
    [
        "corp",
        "corp.web.api",
        "a",
        "0",
        "a1.b2.c3",
        "my-svc.web_api",
        "a-b_c.d",
        "x" * 63,
        DEEPEST,
        LONGEST,
    ],
)
def test_validate_path_accepts(path: str) -> None:
    assert validate_path(path) == path


def test_limits_are_what_the_fixtures_assume() -> None:
    assert len(LONGEST) == MAX_PATH_LENGTH == 253
    assert DEEPEST.count(".") + 1 == MAX_DEPTH == 32


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("Corp", "upper case"),
        ("corp.Web", "upper case segment"),
        ("corp..web", "double dot"),
        (".corp", "leading dot"),
        ("corp.", "trailing dot"),
        (".", "only a dot"),
        (DEEPEST + ".a", "too deep"),
        (LONGEST + "d", "too long"),
        ("x" * 64, "segment too long"),
        ("-corp", "segment starts with '-'"),
        ("corp-", "segment ends with '-'"),
        ("_corp", "segment starts with '_'"),
        ("corp_", "segment ends with '_'"),
        ("corp web", "space"),
        ("corp/web", "slash"),
        ("corp;web", "semicolon"),
        ("corp{web}", "braces"),
        ("corp'web", "quote"),
        ('corp"web', "double quote"),
        ("corp\tweb", "tab"),
        ("corp\nweb", "inner newline"),
        ("corp:web", "colon"),
        ("corp*", "wildcard"),
        ("ünïcode", "non-ascii"),
    ],
)
def test_validate_path_refuses(path: str, why: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_path(path)
    assert caught.value.field == "path", why
    assert caught.value.detail


@pytest.mark.parametrize("path", ["corp.web\n", "corp\n.web", "corp\n"])
def test_validate_path_refuses_a_newline_before_a_dot_or_at_the_end(path: str) -> None:
    """A path ends up in generated config files: a newline in it must never pass.

    (`re.match` with `$` matches before a trailing newline; `\\Z` or `fullmatch` is needed.)
    """
    with pytest.raises(InvalidInput):
        validate_path(path)


def test_validate_path_reports_the_given_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_path("Bad", field="to")
    assert caught.value.field == "to"
    with pytest.raises(InvalidInput) as caught:
        validate_path("", field="to")
    assert caught.value.field == "to"


def test_validate_path_messages_say_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        validate_path("")
    with pytest.raises(InvalidInput, match="254 characters"):
        validate_path(LONGEST + "d")
    with pytest.raises(InvalidInput, match="33 levels"):
        validate_path(DEEPEST + ".a")
    with pytest.raises(InvalidInput, match="'Web'"):
        validate_path("corp.Web")


@pytest.mark.parametrize(
    ("path", "parent"),
    [("corp", None), ("corp.web", "corp"), ("corp.web.api", "corp.web"), ("a.b.c.d", "a.b.c")],
)
def test_parent_path(path: str, parent: str | None) -> None:
    assert parent_path(path) == parent


@pytest.mark.parametrize(
    ("path", "upstream"),
    [("corp", "corp"), ("corp.web.api", "corp_web_api"), ("corp.my-svc", "corp_my_svc")],
)
def test_default_upstream(path: str, upstream: str) -> None:
    assert default_upstream(path) == upstream


# ---- resolve -------------------------------------------------------------------------------------
def test_resolve_of_a_bare_root_gives_defaults() -> None:
    root = node("corp", id="corp")
    resolved = resolve(root, [])
    assert resolved.id == "corp"
    assert resolved.path == "corp"
    assert resolved.labels == {}
    assert resolved.puppet_classes == {}
    assert resolved.puppet_environment == Sourced(value=None, source=DEFAULT_SOURCE)
    assert resolved.port == Sourced(value=None, source=DEFAULT_SOURCE)
    assert resolved.ip_hash == Sourced(value=False, source=DEFAULT_SOURCE)
    assert resolved.upstream == Sourced(value="corp", source=DEFAULT_SOURCE)


def test_labels_inherit_key_by_key_from_the_nearest_setter() -> None:
    nodes = chain(
        ("corp", {"labels": {"team": "infra", "tier": "base", "zone": "eu"}}),
        ("corp.web", {"labels": {"tier": "web"}}),
        ("corp.web.api", {"labels": {"env": "prod", "zone": "us"}}),
    )
    resolved = resolve_chain(nodes)
    assert resolved.labels == {
        "env": Sourced(value="prod", source="corp.web.api"),
        "team": Sourced(value="infra", source="corp"),
        "tier": Sourced(value="web", source="corp.web"),
        "zone": Sourced(value="us", source="corp.web.api"),
    }
    assert list(resolved.labels) == sorted(resolved.labels)


def test_labels_of_the_middle_node_ignore_its_descendants() -> None:
    nodes = chain(
        ("corp", {"labels": {"tier": "base"}}),
        ("corp.web", {"labels": {"tier": "web"}}),
        ("corp.web.api", {"labels": {"tier": "api"}}),
    )
    assert resolve_chain(nodes[:2]).labels == {"tier": Sourced(value="web", source="corp.web")}
    assert resolve_chain(nodes[:1]).labels == {"tier": Sourced(value="base", source="corp")}


def test_puppet_classes_inherit_per_class_and_params_come_whole() -> None:
    nodes = chain(
        ("corp", {"puppet_classes": {"base": {"ntp": True}, "profile::web": {"workers": 4, "gzip": True}}}),
        ("corp.web", {"puppet_classes": {"profile::web": {"workers": 8}}}),
        ("corp.web.api", {"puppet_classes": {"profile::api": {}}}),
    )
    resolved = resolve_chain(nodes)
    assert resolved.puppet_classes == {
        "base": SourcedClass(params={"ntp": True}, source="corp"),
        "profile::api": SourcedClass(params={}, source="corp.web.api"),
        # the nearest setter's parameters, whole: no "gzip" merged in from the root
        "profile::web": SourcedClass(params={"workers": 8}, source="corp.web"),
    }
    assert resolved_classes(resolved) == {
        "base": {"ntp": True},
        "profile::api": {},
        "profile::web": {"workers": 8},
    }


def test_puppet_exclude_drops_an_inherited_class_for_the_subtree() -> None:
    nodes = chain(
        ("corp", {"puppet_classes": {"base": {}, "profile::mail": {"relay": "mx"}}}),
        ("corp.web", {"puppet_exclude": ["profile::mail"]}),
        ("corp.web.api", {}),
    )
    assert set(resolve_chain(nodes[:1]).puppet_classes) == {"base", "profile::mail"}
    assert set(resolve_chain(nodes[:2]).puppet_classes) == {"base"}
    assert set(resolve_chain(nodes).puppet_classes) == {"base"}


def test_a_descendant_can_add_an_excluded_class_again() -> None:
    nodes = chain(
        ("corp", {"puppet_classes": {"profile::mail": {"relay": "mx"}}}),
        ("corp.web", {"puppet_exclude": ["profile::mail"]}),
        ("corp.web.api", {"puppet_classes": {"profile::mail": {"relay": "api-mx"}}}),
        ("corp.web.api.v2", {}),
    )
    expected = SourcedClass(params={"relay": "api-mx"}, source="corp.web.api")
    assert resolve_chain(nodes[:3]).puppet_classes == {"profile::mail": expected}
    assert resolve_chain(nodes).puppet_classes == {"profile::mail": expected}


def test_a_node_that_excludes_and_sets_a_class_keeps_its_own() -> None:
    nodes = chain(
        ("corp", {"puppet_classes": {"profile::web": {"a": 1}}}),
        ("corp.web", {"puppet_exclude": ["profile::web"], "puppet_classes": {"profile::web": {"b": 2}}}),
    )
    assert resolve_chain(nodes).puppet_classes == {
        "profile::web": SourcedClass(params={"b": 2}, source="corp.web")
    }


def test_excluding_a_class_nobody_set_is_harmless() -> None:
    nodes = chain(("corp", {"puppet_classes": {"base": {}}}), ("corp.web", {"puppet_exclude": ["nothing"]}))
    assert set(resolve_chain(nodes).puppet_classes) == {"base"}


def test_an_exclude_does_not_reach_up_or_sideways() -> None:
    root = node("corp", id="corp", puppet_classes={"base": {}})
    web = node("corp.web", id="corp.web", parent_id="corp", puppet_exclude=["base"])
    db = node("corp.db", id="corp.db", parent_id="corp")
    assert set(resolve(web, [root]).puppet_classes) == set()
    assert set(resolve(db, [root]).puppet_classes) == {"base"}
    assert set(resolve(root, []).puppet_classes) == {"base"}


def test_single_values_inherit_from_the_nearest_setter() -> None:
    nodes = chain(
        ("corp", {"puppet_environment": "production", "port": 8080, "ip_hash": True}),
        ("corp.web", {"ip_hash": False}),
        ("corp.web.api", {"puppet_environment": "staging"}),
    )
    resolved = resolve_chain(nodes)
    assert resolved.puppet_environment == Sourced(value="staging", source="corp.web.api")
    assert resolved.port == Sourced(value=8080, source="corp")
    assert resolved.ip_hash == Sourced(value=False, source="corp.web")


def test_none_means_inherit() -> None:
    nodes = chain(
        ("corp", {"puppet_environment": "production", "port": 80, "ip_hash": True}),
        ("corp.web", {"puppet_environment": None, "port": None, "ip_hash": None}),
    )
    resolved = resolve_chain(nodes)
    assert resolved.puppet_environment == Sourced(value="production", source="corp")
    assert resolved.port == Sourced(value=80, source="corp")
    assert resolved.ip_hash == Sourced(value=True, source="corp")


def test_upstream_does_not_inherit() -> None:
    nodes = chain(("corp", {"upstream": "corp_pool"}), ("corp.my-web", {}))
    assert resolve_chain(nodes[:1]).upstream == Sourced(value="corp_pool", source="corp")
    assert resolve_chain(nodes).upstream == Sourced(value="corp_my_web", source=DEFAULT_SOURCE)


def test_upstream_set_on_the_node_itself_wins() -> None:
    nodes = chain(("corp", {"upstream": "corp_pool"}), ("corp.web", {"upstream": "web_pool"}))
    assert resolve_chain(nodes).upstream == Sourced(value="web_pool", source="corp.web")


def test_resolve_does_not_share_params_with_the_node() -> None:
    root = node("corp", id="corp", puppet_classes={"base": {"a": 1}})
    resolved = resolve(root, [])
    resolved.puppet_classes["base"].params["a"] = 2
    assert root.puppet_classes == {"base": {"a": 1}}


KEYS = st.sampled_from(["tier", "team", "zone", "env", "owner"])
VALUES = st.text(alphabet="abcxyz0123456789-_", max_size=8)


@given(st.lists(st.dictionaries(KEYS, VALUES, max_size=5), min_size=1, max_size=8))
def test_resolved_labels_are_the_left_to_right_merge(label_maps: list[dict[str, str]]) -> None:
    nodes = chain(
        *(
            (".".join(f"n{i}" for i in range(depth + 1)), {"labels": labels})
            for depth, labels in enumerate(label_maps)
        )
    )
    expected_values: dict[str, str] = {}
    expected_sources: dict[str, str] = {}
    for level in nodes:
        expected_values.update(level.labels)
        expected_sources.update(dict.fromkeys(level.labels, level.path))
    resolved = resolve_chain(nodes)
    assert {k: s.value for k, s in resolved.labels.items()} == expected_values
    assert {k: s.source for k, s in resolved.labels.items()} == expected_sources


# ---- walks over a store (the `store` fixture is in conftest.py) -------------------------------------
async def build(store: MemoryStore, paths: list[str]) -> dict[str, TreeNode]:
    """Create nodes (parents listed before children) with ids equal to their paths."""
    ops = []
    for path in paths:
        ops.append(Create(node(path, id=path, parent_id=parent_path(path))))
    await store.commit(ops)
    view = store.view()
    return {path: n for path in paths if (n := view.get(TreeNode, path)) is not None}


async def test_descendants_lists_every_node_below_parents_first(store: MemoryStore) -> None:
    paths = ["a", "a.b", "a.d", "a.b.c", "a.b.e", "a.b.c.f", "a.d.g", "x", "x.y", "ab"]
    nodes = await build(store, paths)
    below = descendants(store.view(), nodes["a"])
    found = [n.path for n in below]
    assert sorted(found) == ["a.b", "a.b.c", "a.b.c.f", "a.b.e", "a.d", "a.d.g"]
    assert len(found) == len(set(found))
    for index, path in enumerate(found):
        parent = parent_path(path)
        if parent != "a":
            assert parent in found[:index], f"{path} listed before its parent {parent}"


async def test_descendants_of_a_leaf_and_of_a_middle_node(store: MemoryStore) -> None:
    nodes = await build(store, ["a", "a.b", "a.b.c", "a.d"])
    assert descendants(store.view(), nodes["a.b.c"]) == []
    assert [n.path for n in descendants(store.view(), nodes["a.b"])] == ["a.b.c"]


async def test_descendants_of_a_deep_chain(store: MemoryStore) -> None:
    paths = [".".join(["n"] * depth) for depth in range(1, MAX_DEPTH + 1)]
    nodes = await build(store, paths)
    assert [n.path for n in descendants(store.view(), nodes["n"])] == paths[1:]


async def test_ancestors_are_root_first(store: MemoryStore) -> None:
    nodes = await build(store, ["a", "a.b", "a.b.c", "a.d"])
    view = store.view()
    assert [n.path for n in ancestors(view, nodes["a.b.c"])] == ["a", "a.b"]
    assert ancestors(view, nodes["a"]) == []
    assert [n.path for n in ancestors(view, nodes["a.d"])] == ["a"]
