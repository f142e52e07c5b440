"""Plans for the gateway's objects: the routing snapshot, gateway events, backend pins and ejections,
and health policies.

Invariants checked here:
- a backend state names a machine that is bound to the node, or an endpoint (a task's or an external
  registration) of a service on the node: a pin on anything else would be a typo;
- the root policy (path `/`, or `_root` in a URL) is what every node inherits last; it is stored only
  once set, and until then it is the built-in default (`DEFAULT_POLICY`);
- thresholds and caps are shares between 0 and 1, minimum request counts are positive, a webhook is a plain
  http:// URL;
- a gateway keeps its last RECENT_GATEWAY_EVENTS events; the store's event stream has them all; an
  `alert: crash_loop` event sets or clears its nginx master's crash-loop alert.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET

from treeherd.core.edge.proxy_records import crash_loop_change
from treeherd.core.tree.nodes import node_by_path
from treeherd.core.view import View
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.gateway import (
    DEFAULT_POLICY,
    RECENT_GATEWAY_EVENTS,
    ROOT_POLICY_NODE,
    BackendState,
    GatewayEvent,
    GatewayRecord,
    HealthPolicy,
)
from treeherd.model.gateway_requests import BackendUpdate, GatewayEventIn, PolicySet
from treeherd.model.kinds import binding_key
from treeherd.model.objects import Binding, Domain, Machine, TreeNode
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.routing import RoutingSnapshot
from treeherd.model.services import Service

__all__ = [
    "plan_delete_policy",
    "plan_record_event",
    "plan_set_backend",
    "plan_set_policy",
    "policies",
    "routing_snapshot",
    "validate_gateway_name",
]

MAX_REASON = 2000
ROOT_PATHS = ("/", "_root")  # how the root policy is named: `/` on the command line, `_root` in a URL


def routing_snapshot(view: View) -> RoutingSnapshot:
    """Every object the edge configuration depends on, at the view's revision."""
    return RoutingSnapshot(
        revision=view.revision,
        nodes=sorted(view.all(TreeNode), key=lambda n: n.path),
        machines=sorted(view.all(Machine), key=lambda m: m.hostname),
        bindings=sorted(view.all(Binding), key=lambda b: b.id),
        domains=sorted(view.all(Domain), key=lambda d: d.name),
        backends=sorted(view.all(BackendState), key=lambda b: b.id),
        policies=sorted(view.all(HealthPolicy), key=lambda p: p.id),
        services=sorted(view.all(Service), key=lambda s: s.name),
        endpoints=sorted(view.all(Endpoint), key=lambda e: e.id),
    )


def validate_gateway_name(name: str) -> str:
    if not name or len(name) > 63 or not all((c.isascii() and c.isalnum()) or c in "-_." for c in name):
        raise InvalidInput(
            f"invalid gateway name {name!r}: 1-63 ASCII letters, digits, '-', '_' or '.'", field="name"
        )
    return name


def plan_record_event(
    view: View, name: str, request: GatewayEventIn, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """Append an event to the gateway's record (created on its first event)."""
    name = validate_gateway_name(name)
    if not request.reason or len(request.reason) > MAX_REASON:
        raise InvalidInput(f"reason must be 1-{MAX_REASON} characters", field="reason")
    event = GatewayEvent(at=now, type=request.type, reason=request.reason, figures=dict(request.figures))
    alert_type = request.type if request.alert == "crash_loop" else ""
    record = view.lookup(GatewayRecord, "name", name)
    if record is None:
        created = GatewayRecord(
            id=new_id(),
            created_at=now,
            updated_at=now,
            name=name,
            config_sha256=request.config_sha256 or "",
            last_event=event,
            recent=[event],
            crash_loop=crash_loop_change(None, alert_type, request.reason, now),
        )
        return [Create(created)]
    updated = msgspec.structs.replace(
        record,
        updated_at=now,
        config_sha256=record.config_sha256 if request.config_sha256 is None else request.config_sha256,
        last_event=event,
        recent=[*record.recent, event][-RECENT_GATEWAY_EVENTS:],
        crash_loop=crash_loop_change(record.crash_loop, alert_type, request.reason, now),
    )
    return [Update(updated)]


def _backend_of(view: View, path: str, name: str) -> tuple[TreeNode, str]:
    """The node at `path` and the id its backend state is kept under: a bound machine (by hostname),
    or an endpoint of a service on the node (by endpoint id, task id, or ADDRESS:PORT)."""
    node = node_by_path(view, path, field="node")
    machine = view.lookup(Machine, "hostname", name.strip().lower()) if name else None
    if machine is not None and view.lookup(Binding, "pair", binding_key(machine.id, node.id)) is not None:
        return node, machine.id
    for service in view.referrers(Service, "node", node.id):
        for endpoint in view.where(Endpoint, "service", service.name):
            if name in (endpoint.id, endpoint.task_id, f"{endpoint.address}:{endpoint.port}"):
                return node, endpoint.id
    if machine is not None:
        raise NotFound(
            f"machine {machine.hostname} is not bound to {node.path}: a backend is a bound machine or an"
            f" endpoint of a service on the node (treeherd machine bind {machine.hostname} {node.path})",
            field="hostname",
        )
    raise NotFound(
        f"{name!r} is no backend of {node.path}: name a bound machine's hostname, or a task id or"
        " ADDRESS:PORT of an endpoint of a service on the node (treeherd endpoints SERVICE)",
        field="hostname",
    )


def plan_set_backend(
    view: View, path: str, hostname: str, request: BackendUpdate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """Pin a backend in or out, or record its ejection or restoration."""
    node, backend_id = _backend_of(view, path, hostname)
    if request.reason is not UNSET and len(request.reason) > MAX_REASON:
        raise InvalidInput(f"reason must be at most {MAX_REASON} characters", field="reason")
    changes: dict[str, Any] = {
        name: value
        for name in ("pin", "ejected", "reason", "figures")
        if (value := getattr(request, name)) is not UNSET
    }
    current = view.lookup(BackendState, "pair", binding_key(backend_id, node.id))
    if current is None:
        state = BackendState(
            id=new_id(), created_at=now, updated_at=now, node_id=node.id, machine_id=backend_id, **changes
        )
        return [Create(state)]
    return [Update(msgspec.structs.replace(current, updated_at=now, **changes))]


def _share(value: float | None, field: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{field} must be a share between 0 and 1 (0.99 = 99 %), got {value}", field=field)


def _check_policy(policy: HealthPolicy) -> None:
    _share(policy.alert_below, "alert_below")
    _share(policy.eject_below, "eject_below")
    _share(policy.eject_cap, "eject_cap")
    for field in ("alert_min_requests", "eject_min_requests"):
        if getattr(policy, field) < 1:
            raise InvalidInput(f"{field} must be at least 1", field=field)
    webhook = policy.webhook
    if webhook is not None and (
        not webhook.startswith("http://") or len(webhook) > 2048 or any(c.isspace() for c in webhook)
    ):
        raise InvalidInput(
            f"invalid webhook {webhook!r}: an http:// URL (the gateway posts plain HTTP)", field="webhook"
        )


def plan_set_policy(
    view: View, path: str, request: PolicySet, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """Create or change the health policy of the node at `path` (or the root policy)."""
    node_id = _policy_node(view, path)
    changes: dict[str, Any] = {
        name: value for name in request.__struct_fields__ if (value := getattr(request, name)) is not UNSET
    }
    current = view.lookup(HealthPolicy, "node", node_id)
    if current is None:
        policy = HealthPolicy(id=new_id(), created_at=now, updated_at=now, node_id=node_id, **changes)
        _check_policy(policy)
        return [Create(policy)]
    policy = msgspec.structs.replace(current, updated_at=now, **changes)
    _check_policy(policy)
    return [Update(policy)]


def _policy_node(view: View, path: str) -> str:
    return ROOT_POLICY_NODE if path in ROOT_PATHS else node_by_path(view, path).id


def plan_delete_policy(view: View, path: str) -> list[Op]:
    """Remove a node's own policy; removing the root policy brings back the built-in default."""
    node_id = _policy_node(view, path)
    current = view.lookup(HealthPolicy, "node", node_id)
    if current is None:
        where = "the root" if node_id == ROOT_POLICY_NODE else repr(path)
        raise NotFound(f"{where} has no health policy of its own", field="path")
    return [Delete(current)]


def policies(view: View) -> list[HealthPolicy]:
    """Every stored policy, and the built-in root default while no root policy is stored."""
    stored = sorted(view.all(HealthPolicy), key=lambda p: (p.node_id != ROOT_POLICY_NODE, p.id))
    if view.lookup(HealthPolicy, "node", ROOT_POLICY_NODE) is None:
        return [DEFAULT_POLICY, *stored]
    return stored
