"""Invariants across objects that the store checks at the end of every transaction.

Plans check these too, with better messages; the store checks them again against the state the
transaction actually lands on, because two plans made from the same view can each be valid alone and
wrong together (a physical and a virtual machine bound to one empty node; a child created while its
parent moves). Version asserts cannot catch those: neither plan writes an object the other read.
- a node's path is its parent's path plus one segment, and its children's paths extend its own;
- the machines bound to one node are all physical or all virtual.
"""

from __future__ import annotations

from treeherd.core.tree.tree import parent_path
from treeherd.core.view import View
from treeherd.model.errors import Refused, VersionConflict
from treeherd.model.objects import AnyObject, Binding, Machine, TreeNode

# The kinds `check` looks at: the store skips the others (tasks, most of its writes) without a call.
CHECKED_KINDS = frozenset({TreeNode.kind, Binding.kind, Machine.kind})


def check(view: View, obj: AnyObject, previous: AnyObject | None) -> None:
    """Raise if `obj` (as now stored; `previous` before the transaction) breaks an invariant."""
    if isinstance(obj, TreeNode):
        assert previous is None or isinstance(previous, TreeNode)
        _check_node(view, obj, previous)
    elif isinstance(obj, Binding):
        assert previous is None or isinstance(previous, Binding)
        if previous is None or (previous.machine_id, previous.node_id) != (obj.machine_id, obj.node_id):
            _check_binding(view, obj)
    elif isinstance(obj, Machine):
        assert previous is None or isinstance(previous, Machine)
        if previous is not None and previous.machine_kind != obj.machine_kind:
            for binding in view.referrers(Binding, "machine", obj.id):
                _check_binding(view, binding)


def _check_node(view: View, node: TreeNode, previous: TreeNode | None) -> None:
    parent = view.get(TreeNode, node.parent_id) if node.parent_id is not None else None
    expected_parent = parent.path if parent is not None else None
    if parent_path(node.path) != expected_parent:
        raise VersionConflict(
            f"the tree changed while this change to {node.path!r} was planned (its parent is now at"
            f" {expected_parent!r}): retry"
        )
    if previous is not None and previous.path == node.path:
        return
    for child in view.referrers(TreeNode, "parent", node.id):
        if parent_path(child.path) != node.path:
            raise VersionConflict(
                f"{child.path!r} was created under {previous.path if previous else node.path!r} while it"
                f" moved to {node.path!r}: retry"
            )


def _check_binding(view: View, binding: Binding) -> None:
    machine = view.get(Machine, binding.machine_id)
    if machine is None:
        return  # the store's reference check reports this
    for other in view.referrers(Binding, "node", binding.node_id):
        peer = view.get(Machine, other.machine_id)
        if peer is not None and peer.machine_kind != machine.machine_kind:
            node = view.get(TreeNode, binding.node_id)
            where = repr(node.path) if node is not None else binding.node_id
            raise Refused(
                f"{where} would hold both {peer.machine_kind} ({peer.hostname!r}) and {machine.machine_kind}"
                f" ({machine.hostname!r}) machines; physical and virtual machines are never mixed in one node",
                field="node",
            )
