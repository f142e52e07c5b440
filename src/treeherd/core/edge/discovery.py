"""Discovery decisions: the writes that keep endpoint registrations as their owners say, and the
endpoints of a service as readers see them (registrations plus the static machines of its node).

- An agent says which of its tasks are endpoints now (`plan_agent_endpoints`): the registrations of
  that machine's tasks become exactly that set — new ones created, missing ones removed at once (a
  clean stop, a failed check). A task being drained or told to stop is no endpoint, whatever its
  agent says: the proxies stop sending it requests before it stops.
- Anything else registers itself (`plan_register`): created, or updated if its host, weight or TTL
  changed; a refresh that changes nothing writes nothing (the TTL is a lease kept by the manager).
- Expired leases are deleted (`plan_expire`), each only if it is still the version that expired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from ipaddress import ip_address

import msgspec

from treeherd.core.tree.tree import ancestors, resolve
from treeherd.core.view import View
from treeherd.model.discovery import Endpoint, endpoint_key
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.objects import Binding, Machine, TreeNode
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.services import Service, Task
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskEndpoint

MAX_TTL_S = 86_400.0
MIN_TTL_S = 1.0


def check_address(address: str) -> str:
    """An IP address (not a name: endpoints are what proxies dial)."""
    try:
        return str(ip_address(address))
    except ValueError:
        raise InvalidInput(f"{address!r} is not an IP address", field="address") from None


def check_registration(address: str, port: int, ttl_s: float, weight: int) -> str:
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range: use 1-65535", field="port")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise InvalidInput(
            f"ttl {ttl_s:g}s is out of range: use {MIN_TTL_S:g}s to {MAX_TTL_S:g}s", field="ttl_s"
        )
    if not 0 <= weight <= 256:
        raise InvalidInput(f"weight {weight} is out of range: use 0-256", field="weight")
    return check_address(address)


def plan_register(
    view: View,
    service: str,
    address: str,
    port: int,
    *,
    ttl_s: float,
    weight: int,
    host: str,
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[list[Op], str]:
    """Register (or refresh) an external endpoint; returns the writes and the endpoint's id."""
    address = check_registration(address, port, ttl_s, weight)
    existing = view.lookup(Endpoint, "address", endpoint_key(service, address, port))
    if existing is not None:
        if existing.source == "task":
            raise InvalidInput(
                f"{address}:{port} is registered by task {existing.task_id} of {service}: it is not yours to refresh",
                field="address",
            )
        if (existing.host, existing.weight, existing.ttl_s) == (host, weight, ttl_s):
            return [], existing.id
        changed = msgspec.structs.replace(existing, host=host, weight=weight, ttl_s=ttl_s, updated_at=now)
        return [Update(changed)], existing.id
    endpoint = Endpoint(
        id=new_id(),
        created_at=now,
        updated_at=now,
        service=service,
        address=address,
        port=port,
        host=host,
        source="external",
        weight=weight,
        ttl_s=ttl_s,
    )
    return [Create(endpoint)], endpoint.id


def plan_deregister(view: View, service: str, address: str, port: int) -> list[Op]:
    found = view.lookup(Endpoint, "address", endpoint_key(service, check_address(address), port))
    if found is None:
        raise NotFound(f"no endpoint {address}:{port} of {service!r} is registered", field="address")
    return [Delete(found)]


def plan_agent_endpoints(
    view: View,
    machine: Machine,
    endpoints: Sequence[TaskEndpoint],
    current: Sequence[Endpoint],
    *,
    address: str,
    ttl_s: float,
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[list[Op], list[str]]:
    """Make the registrations of `machine`'s tasks (`current`) exactly `endpoints`; returns the writes
    and the ids of every registration the agent still holds (their leases are refreshed)."""
    ops: list[Op] = []
    held: list[str] = []
    wanted: dict[str, TaskEndpoint] = {}
    for reported in endpoints:
        task = view.get(Task, reported.task_id)
        if task is None or task.machine_id != machine.id:
            continue  # a task deleted or moved meanwhile: the agent will learn
        if task.drain_until is not None or task.desired_state > TaskState.RUNNING:
            continue  # being drained or stopped: the proxies must not send it new requests
        wanted[endpoint_key(task.service_name, address, reported.port)] = reported
    for stored in current:
        key = endpoint_key(stored.service, stored.address, stored.port)
        if key in wanted and wanted[key].task_id == stored.task_id:
            held.append(stored.id)
            del wanted[key]
        else:
            ops.append(Delete(stored))
    for key, wanted_endpoint in wanted.items():
        task = view.get(Task, wanted_endpoint.task_id)
        assert task is not None
        other = view.lookup(Endpoint, "address", key)
        if other is not None and other.machine_id != machine.id:
            ops.append(Delete(other))  # the address moved to this machine's task
        created = Endpoint(
            id=new_id(),
            created_at=now,
            updated_at=now,
            service=task.service_name,
            address=address,
            port=wanted_endpoint.port,
            host=machine.hostname,
            source="task",
            task_id=task.id,
            machine_id=machine.id,
            ttl_s=ttl_s,
        )
        ops.append(Create(created))
        held.append(created.id)
    return ops, held


def plan_expire(view: View, expired: Iterable[tuple[str, int]]) -> list[Op]:
    """Delete the endpoints whose lease ran out, each only if still at the version that expired."""
    ops: list[Op] = []
    for endpoint_id, version in expired:
        found = view.get(Endpoint, endpoint_id)
        if found is not None and found.version == version:
            ops.append(Delete(found))
    return ops


def static_endpoints(view: View, service: Service) -> list[Endpoint]:
    """The machines bound to the service's node, on the node's (inherited) port, with their weight."""
    node = view.get(TreeNode, service.node_id)
    if node is None:
        return []
    port = resolve(node, ancestors(view, node)).port.value
    if not isinstance(port, int):
        return []
    found: list[Endpoint] = []
    for binding in view.referrers(Binding, "node", node.id):
        machine = view.get(Machine, binding.machine_id)
        if machine is None or not machine.ips:
            continue
        found.append(
            Endpoint(
                id=f"static-{binding.id}",
                created_at=binding.created_at,
                updated_at=binding.updated_at,
                version=binding.version,
                service=service.name,
                address=machine.ips[0],
                port=port,
                host=machine.hostname,
                source="static",
                machine_id=machine.id,
                weight=binding.weight,
                ttl_s=0.0,
            )
        )
    return found


def service_endpoints(view: View, name: str) -> list[Endpoint]:
    """Every endpoint of `name`: registrations, then the static machines of its node (if it is a
    service), ordered by address and port."""
    registered = view.where(Endpoint, "service", name)
    service = view.lookup(Service, "name", name)
    static = static_endpoints(view, service) if service is not None else []
    return sorted([*registered, *static], key=lambda e: (_sortable(e.address), e.port, e.source))


def _sortable(address: str) -> tuple[int, int]:
    ip = ip_address(address)
    return (ip.version, int(ip))
