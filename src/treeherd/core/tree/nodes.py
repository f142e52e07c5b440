"""Plans for the service tree: create, update, move and delete nodes, and their routes.

Each function reads the view, checks the request, and returns the store operations that carry it out,
the main object's operation first. Every object a plan depends on but does not write is asserted at the
version it was read, so a plan made from a state that has since changed fails instead of applying.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import msgspec
from msgspec import UNSET

from treeherd.core.puppet.puppet import check_classes
from treeherd.core.tree import validate
from treeherd.core.tree.tree import MAX_DEPTH, MAX_PATH_LENGTH, descendants, parent_path, validate_path
from treeherd.core.view import View
from treeherd.model.base import Object
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound, Refused, VersionConflict
from treeherd.model.kinds import route_key
from treeherd.model.objects import Binding, Domain, DomainUri, ParamValue, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete, Op, Update
from treeherd.model.requests import NodeCreate, NodeMove, NodeUpdate, RouteSpec

V = TypeVar("V")


def node_by_path(view: View, path: str, *, field: str = "path") -> TreeNode:
    """The node at `path`, or NotFound naming the path."""
    node = view.lookup(TreeNode, "path", path)
    if node is None:
        raise NotFound(f"no tree node at {path!r} (list nodes with: treeherd tree ls)", field=field)
    return node


def domain_by_name(view: View, name: str, *, field: str = "domain") -> Domain:
    domain = view.lookup(Domain, "name", name.strip().lower())
    if domain is None:
        raise NotFound(f"no domain {name!r} (add it with: treeherd domain add {name} --port 80)", field=field)
    return domain


def check_version(obj: Object, expected: int | None) -> None:
    """Refuse an update whose caller read an older version."""
    if expected is not None and expected != obj.version:
        raise VersionConflict(
            f"the object changed since you read it (you have version {expected}, it is now {obj.version}):"
            " read it again and retry",
            field="version",
        )


def _check_attributes(
    labels: dict[str, str | None],
    classes: dict[str, dict[str, ParamValue] | None],
    exclude: list[str],
    environment: str | None,
    upstream: str | None,
    port: int | None,
) -> None:
    validate.labels(labels)
    for name, params in classes.items():
        validate.puppet_class(name, params)
    for name in exclude:
        validate.puppet_class(name, None, field="puppet_exclude")
    validate.puppet_environment(environment)
    validate.upstream(upstream)
    validate.port(port)


def plan_create_node(view: View, request: NodeCreate, now: datetime, new_id: Callable[[], str]) -> list[Op]:
    path = validate_path(request.path)
    if view.lookup(TreeNode, "path", path) is not None:
        raise AlreadyExists(f"a tree node already exists at {path!r}", field="path")
    _check_attributes(
        dict(request.labels),
        dict(request.puppet_classes),
        request.puppet_exclude,
        request.puppet_environment,
        request.upstream,
        request.port,
    )
    ops: list[Op] = []
    parent_id = None
    parent = parent_path(path)
    if parent is not None:
        parent_node = view.lookup(TreeNode, "path", parent)
        if parent_node is None:
            raise NotFound(
                f"the parent {parent!r} of {path!r} does not exist: create it first (treeherd tree add {parent})",
                field="path",
            )
        parent_id = parent_node.id
        ops.append(Assert(parent_node))
    node = TreeNode(
        id=new_id(),
        created_at=now,
        updated_at=now,
        path=path,
        parent_id=parent_id,
        labels=dict(request.labels),
        puppet_classes={k: dict(v) for k, v in request.puppet_classes.items()},
        puppet_exclude=sorted(set(request.puppet_exclude)),
        puppet_environment=request.puppet_environment,
        upstream=request.upstream,
        port=request.port,
        ip_hash=request.ip_hash,
    )
    return [Create(node), *ops, *check_classes(view, request.puppet_classes)]


def plan_update_node(view: View, path: str, request: NodeUpdate, now: datetime) -> list[Op]:
    node = node_by_path(view, path)
    check_version(node, request.version)
    _check_attributes(
        request.labels,
        request.puppet_classes,
        [] if request.puppet_exclude is UNSET else request.puppet_exclude,
        None if request.puppet_environment is UNSET else request.puppet_environment,
        None if request.upstream is UNSET else request.upstream,
        None if request.port is UNSET else request.port,
    )
    labels = merge_patch(node.labels, request.labels)
    classes = merge_patch(node.puppet_classes, request.puppet_classes)
    changes: dict[str, object] = {"labels": labels, "puppet_classes": classes, "updated_at": now}
    for name in ("puppet_environment", "upstream", "port", "ip_hash"):
        value = getattr(request, name)
        if value is not UNSET:
            changes[name] = value
    if request.puppet_exclude is not UNSET:
        changes["puppet_exclude"] = sorted(set(request.puppet_exclude))
    return [Update(msgspec.structs.replace(node, **changes)), *check_classes(view, request.puppet_classes)]


def merge_patch(current: dict[str, V], patch: dict[str, V | None]) -> dict[str, V]:
    """A JSON merge patch of one map: None removes a key."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return dict(sorted(merged.items()))


def plan_move_node(view: View, path: str, request: NodeMove, now: datetime) -> list[Op]:
    node = node_by_path(view, path)
    check_version(node, request.version)
    target = validate_path(request.to, field="to")
    if target == node.path:
        raise InvalidInput(f"{path!r} is already at {target!r}", field="to")
    if target.startswith(node.path + "."):
        raise Refused(f"cannot move {path!r} under itself ({target!r})", field="to")
    if view.lookup(TreeNode, "path", target) is not None:
        raise AlreadyExists(f"a tree node already exists at {target!r}", field="to")
    ops: list[Op] = []
    new_parent_path = parent_path(target)
    new_parent_id = None
    if new_parent_path is not None:
        new_parent = node_by_path(view, new_parent_path, field="to")
        new_parent_id = new_parent.id
        ops.append(Assert(new_parent))
    below = descendants(view, node)
    depth_added = target.count(".") - node.path.count(".")
    deepest = max((n.path.count(".") for n in [node, *below]), default=0) + 1 + depth_added
    if deepest > MAX_DEPTH:
        raise Refused(
            f"moving {path!r} to {target!r} would make the tree {deepest} levels deep; at most {MAX_DEPTH}"
        )
    longest = max(len(n.path) for n in [node, *below]) - len(node.path) + len(target)
    if longest > MAX_PATH_LENGTH:
        raise Refused(
            f"moving {path!r} to {target!r} would make a path {longest} characters long; at most {MAX_PATH_LENGTH}",
            field="to",
        )
    moved = [Update(msgspec.structs.replace(node, path=target, parent_id=new_parent_id, updated_at=now))]
    for child in below:
        new_path = target + child.path[len(node.path) :]
        moved.append(Update(msgspec.structs.replace(child, path=new_path, updated_at=now)))
    return [*moved, *ops]


def plan_delete_node(view: View, path: str, *, recursive: bool, version: int | None = None) -> list[Op]:
    node = node_by_path(view, path)
    check_version(node, version)
    below = descendants(view, node)
    subtree = [node, *below]
    held = [(n, _holdings(view, n)) for n in subtree]
    if not recursive:
        bindings, records = held[0][1]
        reasons = []
        if below:
            reasons.append(f"{len(below)} descendant node(s)")
        if bindings:
            reasons.append(f"{len(bindings)} bound machine(s)")
        if records:
            reasons.append(f"{len(records)} provisioning record(s)")
        if reasons:
            raise Refused(
                f"{path!r} still has {', '.join(reasons)}: remove them first, or delete with --recursive"
                " to remove the whole subtree with its bindings and provisioning records"
            )
    ops: list[Op] = []
    # Children before parents, and what refers to a node before the node itself.
    for current, (bindings, records) in reversed(held):
        ops.extend(Delete(b) for b in bindings)
        ops.extend(Delete(r) for r in records)
        ops.append(Delete(current))
    return ops


def _holdings(view: View, node: TreeNode) -> tuple[list[Binding], list[ProvisioningRecord]]:
    return (
        view.referrers(Binding, "node", node.id),
        view.referrers(ProvisioningRecord, "node", node.id),
    )


def plan_add_route(view: View, path: str, request: RouteSpec, now: datetime) -> list[Op]:
    node = node_by_path(view, path)
    domain = domain_by_name(view, request.domain)
    uri = validate.uri(request.uri)
    holder = view.lookup(TreeNode, "route", route_key(domain.id, uri))
    if holder is not None:
        where = "this node" if holder.id == node.id else repr(holder.path)
        raise AlreadyExists(f"{domain.name}{uri} is already routed to {where}", field="uri")
    routes = [*node.domain_uris, DomainUri(domain_id=domain.id, uri=uri)]
    return [Update(msgspec.structs.replace(node, domain_uris=routes, updated_at=now)), Assert(domain)]


def plan_remove_route(view: View, path: str, request: RouteSpec, now: datetime) -> list[Op]:
    node = node_by_path(view, path)
    domain = domain_by_name(view, request.domain)
    remaining = [r for r in node.domain_uris if not (r.domain_id == domain.id and r.uri == request.uri)]
    if len(remaining) == len(node.domain_uris):
        raise NotFound(f"{path!r} has no route {domain.name}{request.uri}", field="uri")
    return [Update(msgspec.structs.replace(node, domain_uris=remaining, updated_at=now))]
