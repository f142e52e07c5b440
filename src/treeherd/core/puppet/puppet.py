"""The Puppet class catalog: checking nodes' classes against it, and replacing it (P2).

Rules:
- Until a catalog is synced, any well-formed class name and parameter is accepted (a cluster that does
  not use the catalog loses nothing). Once one is, a node may only set classes it lists, and only
  parameters the class declares (classes from a classes file declare none we know: any is accepted).
- A plan that checked a node's classes asserts the catalog's version, and a sync asserts every node and
  the cluster settings it checked, so whichever of two racing plans commits second is made again from
  the new state (a sync is rare; asserting writes nothing).
- A sync that would leave a node (or the cluster's default class) using a class or parameter the new
  catalog lacks is refused with the list of what is in the way, unless forced; a forced sync reports
  those nodes as `stale` (the ENC keeps giving them what they set: Puppet will say what is missing).
- The cluster's default class must be in the catalog too, once there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET

from treeherd.core.tree import validate
from treeherd.core.view import View
from treeherd.model.errors import InvalidInput, Refused
from treeherd.model.objects import ParamValue, TreeNode
from treeherd.model.ops import Assert, Create, Op, Update
from treeherd.model.puppet import CatalogChange, CatalogSync, PuppetCatalog, PuppetClass
from treeherd.model.requests import ClusterUpdate
from treeherd.model.services import ClusterSettings

__all__ = [
    "MAX_CLASSES",
    "catalog_of",
    "check_classes",
    "class_index",
    "cluster_puppet_changes",
    "plan_sync_catalog",
]

MAX_CLASSES = 100_000
_SHOWN = 10  # how many blockers an error lists before "and N more"
_SYNC_HINT = "after changing the Puppet code: treeherd puppet sync-classes --modules DIR"


def catalog_of(view: View) -> PuppetCatalog | None:
    """The synced catalog, or None while none was ever synced."""
    return view.lookup(PuppetCatalog, "name", "default")


def class_index(classes: Iterable[PuppetClass]) -> dict[str, PuppetClass]:
    return {cls.name: cls for cls in classes}


def _problem(index: Mapping[str, PuppetClass], name: str, params: Iterable[str]) -> str | None:
    """What is wrong with setting class `name` with these parameters, or None."""
    found = index.get(name)
    if found is None:
        return f"Puppet class {name!r} is not in the class catalog"
    if not found.params_known:
        return None
    declared = {p.name for p in found.params}
    unknown = sorted(set(params) - declared)
    if unknown:
        offered = ", ".join(p.name for p in found.params) or "none"
        return f"class {name} declares no parameter {', '.join(map(repr, unknown))} (it declares: {offered})"
    return None


def check_classes(
    view: View, classes: Mapping[str, Mapping[str, ParamValue] | None], *, field: str = "puppet_classes"
) -> list[Op]:
    """Refuse classes the catalog lacks and parameters a class does not declare; None values (a class
    being removed) are not checked. Returns the assert that ties the plan to this catalog version."""
    catalog = catalog_of(view)
    if catalog is None:
        return []
    setting = {name: params for name, params in classes.items() if params is not None}
    if not setting:
        return []
    index = class_index(catalog.classes)
    for name, params in setting.items():
        problem = _problem(index, name, params)
        if problem is not None:
            raise InvalidInput(
                f"{problem}: list the classes with 'treeherd puppet classes' ({_SYNC_HINT})", field=field
            )
    return [Assert(catalog)]


def cluster_puppet_changes(view: View, request: ClusterUpdate) -> dict[str, Any]:
    """The validated Puppet fields of a cluster settings update."""
    changes: dict[str, Any] = {}
    if request.puppet_default_class is not UNSET:
        name = request.puppet_default_class or None
        if name is not None:
            validate.puppet_class(name, None, field="puppet_default_class")
            check_classes(view, {name: {}}, field="puppet_default_class")
        changes["puppet_default_class"] = name
    if request.puppet_unknown_host is not UNSET:
        changes["puppet_unknown_host"] = request.puppet_unknown_host
    return changes


def _validated(classes: list[PuppetClass]) -> list[PuppetClass]:
    if not classes:
        raise InvalidInput(
            "the new catalog has no classes: point --modules at a directory of Puppet modules"
            " (each with manifests/*.pp) or give a classes file with one class a line",
            field="classes",
        )
    if len(classes) > MAX_CLASSES:
        raise InvalidInput(f"{len(classes)} classes: at most {MAX_CLASSES}", field="classes")
    seen: dict[str, PuppetClass] = {}
    for cls in classes:
        validate.puppet_class(cls.name, {p.name: None for p in cls.params}, field="classes")
        if cls.parent is not None:
            validate.puppet_class(cls.parent, None, field="classes")
        names = [p.name for p in cls.params]
        if len(set(names)) != len(names):
            raise InvalidInput(f"class {cls.name} declares a parameter twice", field="classes")
        if cls.name in seen:
            raise InvalidInput(f"class {cls.name} is listed twice", field="classes")
        seen[cls.name] = cls
    return [seen[name] for name in sorted(seen)]


def _blockers(view: View, index: Mapping[str, PuppetClass], default_class: str | None) -> list[str]:
    """Nodes (and the cluster setting) that use what the catalog `index` lacks."""
    found: list[str] = []
    for node in view.all(TreeNode):
        for name, params in node.puppet_classes.items():
            problem = _problem(index, name, params)
            if problem is not None:
                found.append(f"{node.path} ({problem})")
    found.sort()
    if default_class is not None and default_class not in index:
        found.insert(0, f"the cluster's default class {default_class!r}")
    return found


def _shown(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return "; ".join(items[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def plan_sync_catalog(
    view: View,
    request: CatalogSync,
    settings: ClusterSettings,
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[list[Op], CatalogChange]:
    """Replace the catalog with `request.classes`; the ops are empty when nothing changes."""
    classes = _validated(list(request.classes))
    index = class_index(classes)
    stale = _blockers(view, index, settings.puppet_default_class)
    if stale and not request.force:
        raise Refused(
            f"the new catalog lacks what {len(stale)} user(s) need: {_shown(stale)}. Change those nodes"
            " first (treeherd tree set PATH --remove-puppet-class NAME), or sync with --force",
            field="classes",
        )
    current = catalog_of(view)
    old = class_index(current.classes) if current is not None else {}
    change = CatalogChange(
        added=sorted(index.keys() - old.keys()),
        removed=sorted(old.keys() - index.keys()),
        changed=sorted(name for name in index.keys() & old.keys() if index[name] != old[name]),
        classes=len(classes),
        dry_run=request.dry_run,
        stale=stale,
    )
    ops: list[Op]
    if current is None:
        created = PuppetCatalog(
            id=new_id(), created_at=now, updated_at=now, source=request.source, classes=classes
        )
        ops = [Create(created)]
    elif current.classes == classes and current.source == request.source:
        ops = []
    else:
        updated = msgspec.structs.replace(current, source=request.source, classes=classes, updated_at=now)
        ops = [Update(updated)]
    if ops:
        ops += [Assert(node) for node in view.all(TreeNode)]
        stored = view.lookup(ClusterSettings, "name", "default")
        if stored is not None:
            ops.append(Assert(stored))
    return ops, change
