"""The asset agent's report (P5): register or update the machine, bind it where it was provisioned for.

`plan_report` is one transaction: the machine is created (or updated: addresses, kind, resources, and
labels merged in), and if a provisioning record names the host, a binding to the record's node is created
(unless it exists) and the record deleted. Running it twice changes nothing the second time: the
machine is as reported and the record is gone. A report that would mix physical and virtual machines in
the intended node is refused with nothing written (the record stays, to be corrected).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from treeherd.core.tree import validate
from treeherd.core.tree.nodes import merge_patch
from treeherd.core.view import View
from treeherd.model.errors import Refused
from treeherd.model.kinds import binding_key
from treeherd.model.objects import Binding, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Assert, Create, Delete, Op, Update
from treeherd.model.provisioning import MachineReport

__all__ = ["plan_report"]


def _reported(
    view: View, request: MachineReport, now: datetime, new_id: Callable[[], str]
) -> tuple[Machine, Op]:
    """The machine as the report leaves it, and the op that stores it."""
    hostname = validate.hostname(request.hostname)
    validate.labels(dict(request.labels))
    validate.non_negative(request.cpus, field="cpus")
    validate.non_negative(request.memory_bytes, field="memory_bytes")
    ips = validate.ip_list(request.ips)
    fields = {
        "ips": ips,
        "machine_kind": request.machine_kind,
        "cpus": float(request.cpus),
        "memory_bytes": request.memory_bytes,
    }
    current = view.lookup(Machine, "hostname", hostname)
    if current is None:
        machine = Machine(
            id=new_id(),
            created_at=now,
            updated_at=now,
            hostname=hostname,
            labels=dict(sorted(request.labels.items())),
            **fields,  # type: ignore[arg-type]
        )
        return machine, Create(machine)
    labels = merge_patch(current.labels, dict(request.labels))
    if labels == current.labels and all(getattr(current, k) == v for k, v in fields.items()):
        return current, Assert(current)
    updated = msgspec.structs.replace(current, labels=labels, updated_at=now, **fields)
    return updated, Update(updated)


def _mix_check(view: View, machine: Machine, node: TreeNode) -> None:
    for binding in view.referrers(Binding, "node", node.id):
        other = view.get(Machine, binding.machine_id)
        if other is not None and other.id != machine.id and other.machine_kind != machine.machine_kind:
            raise Refused(
                f"{machine.hostname!r} reports itself {machine.machine_kind}, but {node.path!r} holds"
                f" {other.machine_kind} machines (such as {other.hostname!r}) and the two are never mixed in one"
                " node: report with the right --kind, or provision the host for another node"
                f" (treeherd provision rm {machine.hostname}; treeherd provision add {machine.hostname} --node PATH)",
                field="machine_kind",
            )


def plan_report(view: View, request: MachineReport, now: datetime, new_id: Callable[[], str]) -> list[Op]:
    """The machine's op first, then the binding and the record's deletion (if it was being provisioned)."""
    machine, op = _reported(view, request, now, new_id)
    ops: list[Op] = [op]
    before = view.get(Machine, machine.id)
    if before is not None and before.machine_kind != machine.machine_kind:
        for binding in view.referrers(Binding, "machine", machine.id):
            node = view.get(TreeNode, binding.node_id)
            if node is not None:
                _mix_check(view, machine, node)
    record = view.lookup(ProvisioningRecord, "hostname", machine.hostname)
    if record is None:
        return ops
    node = view.get(TreeNode, record.node_id)
    assert node is not None  # the record references its node
    _mix_check(view, machine, node)
    existing = view.lookup(Binding, "pair", binding_key(machine.id, node.id))
    if existing is None:
        ops.append(
            Create(
                Binding(
                    id=new_id(),
                    created_at=now,
                    updated_at=now,
                    machine_id=machine.id,
                    node_id=node.id,
                    weight=1,
                )
            )
        )
    ops += [Delete(record), Assert(node)]
    return ops
