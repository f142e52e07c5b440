"""The External Node Classifier's decision: hostname -> bound nodes -> classes (P3-P5).

`classify` reads only what one host involves (its machine by hostname, the machine's bindings, each
bound node and its ancestors, or its provisioning record), so it costs the same with 100 or 100,000
hosts in the tree. Rules, first match wins:
1. bound to nodes that all resolve to the same classes (with parameters) and environment: those;
2. bound to nodes that disagree: a conflict, only the cluster's default class and `treeherd_conflict`
   listing the nodes; the environment only if they all agree on it;
3. not bound, with a provisioning record: the intended node's classes (Puppet's first run on a new host
   already sets up its service);
4. unknown: NotFound, or with the `default` policy (the cluster's `puppet_unknown_host`, or the
   caller's override) the default class.
`conflict_ops` keeps one `PuppetConflict` record per conflicting host in step with the answers, so each
new conflict, change and resolution is an event in the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from treeherd.core.tree import validate
from treeherd.core.tree.tree import ancestors, resolve, resolved_classes
from treeherd.core.view import View
from treeherd.model.enc import EncAnswer, UnknownHost
from treeherd.model.errors import NotFound
from treeherd.model.objects import Binding, Machine, ParamValue, ProvisioningRecord, TreeNode
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.puppet import PuppetConflict
from treeherd.model.services import ClusterSettings

__all__ = ["classify", "conflict_ops"]

Classes = dict[str, dict[str, ParamValue]]


def _effective(view: View, node: TreeNode) -> tuple[Classes, str | None]:
    resolved = resolve(node, ancestors(view, node))
    environment = resolved.puppet_environment.value
    return resolved_classes(resolved), environment if isinstance(environment, str) else None


def _parameters(machine: Machine | None, paths: list[str], source: str) -> dict[str, ParamValue]:
    parameters: dict[str, ParamValue] = {"treeherd_nodes": paths, "treeherd_source": source}
    if machine is not None:
        parameters["treeherd_hostname"] = machine.hostname
        parameters["treeherd_kind"] = machine.machine_kind
        parameters["treeherd_labels"] = dict(machine.labels)
        parameters["treeherd_ips"] = list(machine.ips)
    return parameters


def _default_classes(settings: ClusterSettings) -> Classes:
    name = settings.puppet_default_class
    return {name: {}} if name else {}


def _difference(found: list[tuple[str, Classes, str | None]]) -> str:
    """What the bound nodes disagree on, for the conflict record and the operator."""
    if any(classes != found[0][1] for _, classes, _ in found):
        return "classes differ: " + "; ".join(
            f"{path}: {', '.join(classes) or 'none'}" for path, classes, _ in found
        )
    return "environments differ: " + "; ".join(f"{path}: {env or 'unset'}" for path, _, env in found)


def classify(
    view: View, hostname: str, settings: ClusterSettings, unknown: UnknownHost | None = None
) -> EncAnswer:
    """The ENC answer for `hostname`; NotFound for an unknown host under the `fail` policy."""
    name = validate.hostname(hostname)
    machine = view.lookup(Machine, "hostname", name)
    bindings = view.referrers(Binding, "machine", machine.id) if machine is not None else []
    nodes = sorted(
        (node for b in bindings if (node := view.get(TreeNode, b.node_id)) is not None), key=lambda n: n.path
    )
    if nodes:
        paths = [n.path for n in nodes]
        found = [(n.path, *_effective(view, n)) for n in nodes]
        _, classes, environment = found[0]
        if all(c == classes and e == environment for _, c, e in found[1:]):
            return EncAnswer(
                hostname=name,
                source="bound",
                classes=classes,
                parameters=_parameters(machine, paths, "bound"),
                environment=environment,
            )
        environments = {e for _, _, e in found}
        parameters = _parameters(machine, paths, "conflict")
        parameters["treeherd_conflict"] = paths
        parameters["treeherd_conflict_reason"] = _difference(found)
        return EncAnswer(
            hostname=name,
            source="conflict",
            classes=_default_classes(settings),
            parameters=parameters,
            environment=environments.pop() if len(environments) == 1 else None,
        )
    record = view.lookup(ProvisioningRecord, "hostname", name)
    node = view.get(TreeNode, record.node_id) if record is not None else None
    if node is not None:
        classes, environment = _effective(view, node)
        return EncAnswer(
            hostname=name,
            source="provisioning",
            classes=classes,
            parameters=_parameters(machine, [node.path], "provisioning"),
            environment=environment,
        )
    if (unknown or settings.puppet_unknown_host) == "default":
        return EncAnswer(
            hostname=name,
            source="default",
            classes=_default_classes(settings),
            parameters=_parameters(machine, [], "default"),
        )
    where = "is in the inventory but bound to no node" if machine is not None else "is not in the inventory"
    raise NotFound(
        f"host {name!r} {where} and has no provisioning record: bind it (treeherd machine bind {name} PATH)"
        f" or record it (treeherd provision add {name} --node PATH)",
        field="hostname",
    )


def conflict_ops(
    view: View, hostname: str, answer: EncAnswer | None, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """The write that keeps the host's conflict record in step with `answer` (None: unknown host)."""
    existing = view.lookup(PuppetConflict, "hostname", hostname)
    if answer is None or answer.source != "conflict":
        return [Delete(existing)] if existing is not None else []
    nodes = answer.parameters["treeherd_conflict"]
    reason = answer.parameters["treeherd_conflict_reason"]
    assert isinstance(nodes, list) and isinstance(reason, str)
    if existing is None:
        record = PuppetConflict(
            id=new_id(), created_at=now, updated_at=now, hostname=hostname, nodes=nodes, reason=reason
        )
        return [Create(record)]
    if existing.nodes == nodes and existing.reason == reason:
        return []
    return [Update(msgspec.structs.replace(existing, nodes=nodes, reason=reason, updated_at=now))]
