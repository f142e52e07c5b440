"""Tree paths and inheritance: what a node's effective attributes are, and where each comes from.

Rules of inheritance (T3), nearest ancestor wins:
- `labels` and `puppet_classes` inherit key by key (a class's parameters come whole from the nearest
  node that sets the class); `puppet_exclude` on a node drops an inherited class from it and its subtree
  until a descendant sets the class again;
- `puppet_environment`, `port` and `ip_hash` inherit as single values (None means "inherit");
- `upstream` does not inherit (it names one service): it defaults to the path with dots as underscores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from treeherd.core.view import View
from treeherd.model.errors import InvalidInput
from treeherd.model.objects import ParamValue, TreeNode
from treeherd.model.views import ResolvedNode, Sourced, SourcedClass

DEFAULT_SOURCE = "(default)"
MAX_DEPTH = 32
MAX_PATH_LENGTH = 253
_SEGMENT = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")


def validate_path(path: str, *, field: str = "path") -> str:
    """Return `path` if it is a valid dotted path, else raise InvalidInput saying what is wrong."""
    if not path:
        raise InvalidInput("the path is empty: give a dotted path such as corp.web.api", field=field)
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInput(f"the path is {len(path)} characters long; at most {MAX_PATH_LENGTH}", field=field)
    segments = path.split(".")
    if len(segments) > MAX_DEPTH:
        raise InvalidInput(f"the path has {len(segments)} levels; at most {MAX_DEPTH}", field=field)
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidInput(
                f"invalid path {path!r}: segment {segment!r} must be 1-63 lower-case letters, digits, '-' or '_',"
                " starting and ending with a letter or digit (segments are separated by single dots)",
                field=field,
            )
    return path


def parent_path(path: str) -> str | None:
    """The parent's path, or None for a root node."""
    head, dot, _ = path.rpartition(".")
    return head if dot else None


def default_upstream(path: str) -> str:
    """The upstream name a node gets when it sets none."""
    return path.replace(".", "_").replace("-", "_")


def ancestors(view: View, node: TreeNode) -> list[TreeNode]:
    """The node's ancestors, root first (not including the node)."""
    chain: list[TreeNode] = []
    parent_id = node.parent_id
    while parent_id is not None:
        parent = view.get(TreeNode, parent_id)
        if parent is None:  # the store's references make this impossible; be safe anyway
            break
        chain.append(parent)
        parent_id = parent.parent_id
    chain.reverse()
    return chain


def resolve(node: TreeNode, chain: Sequence[TreeNode]) -> ResolvedNode:
    """Effective attributes of `node`, given its ancestors root first."""
    lineage = [*chain, node]
    labels: dict[str, Sourced] = {}
    classes: dict[str, SourcedClass] = {}
    environment = Sourced(value=None, source=DEFAULT_SOURCE)
    port = Sourced(value=None, source=DEFAULT_SOURCE)
    ip_hash = Sourced(value=False, source=DEFAULT_SOURCE)
    for level in lineage:
        for key, value in level.labels.items():
            labels[key] = Sourced(value=value, source=level.path)
        for name in level.puppet_exclude:
            classes.pop(name, None)
        for name, params in level.puppet_classes.items():
            classes[name] = SourcedClass(params=dict(params), source=level.path)
        if level.puppet_environment is not None:
            environment = Sourced(value=level.puppet_environment, source=level.path)
        if level.port is not None:
            port = Sourced(value=level.port, source=level.path)
        if level.ip_hash is not None:
            ip_hash = Sourced(value=level.ip_hash, source=level.path)
    upstream = (
        Sourced(value=node.upstream, source=node.path)
        if node.upstream is not None
        else Sourced(value=default_upstream(node.path), source=DEFAULT_SOURCE)
    )
    return ResolvedNode(
        id=node.id,
        path=node.path,
        labels=dict(sorted(labels.items())),
        puppet_classes=dict(sorted(classes.items())),
        puppet_environment=environment,
        upstream=upstream,
        port=port,
        ip_hash=ip_hash,
    )


def resolved_classes(resolved: ResolvedNode) -> dict[str, dict[str, ParamValue]]:
    """Just the effective classes and their parameters."""
    return {name: cls.params for name, cls in resolved.puppet_classes.items()}


def descendants(view: View, node: TreeNode) -> list[TreeNode]:
    """Every node below `node`, parents before children."""
    found: list[TreeNode] = []
    frontier = [node]
    while frontier:
        current = frontier.pop()
        children = sorted(view.referrers(TreeNode, "parent", current.id), key=lambda n: n.path)
        found.extend(children)
        frontier.extend(reversed(children))
    return found
