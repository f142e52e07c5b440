"""Plans for the machine inventory: machines, their bindings to nodes, domains, provisioning records.

Invariants checked here (and, where the registry declares them, again by the store):
- a hostname, a domain name and a provisioning hostname are unique;
- a node never holds physical and virtual machines together (seed 000: they are not mixed);
- a port with ssl needs both a certificate and a key path;
- a domain that routes still use cannot be deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec
from msgspec import UNSET

from treeherd.core.tree import validate
from treeherd.core.tree.nodes import check_version, domain_by_name, merge_patch, node_by_path
from treeherd.core.view import View
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound, Refused
from treeherd.model.kinds import binding_key
from treeherd.model.objects import (
    Binding,
    Domain,
    DomainPort,
    Machine,
    MachineKind,
    ProvisioningRecord,
    TreeNode,
)
from treeherd.model.ops import Assert, Create, Delete, Op, Update
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    DomainUpdate,
    MachineCreate,
    MachineUpdate,
    ProvisionCreate,
)
from treeherd.model.security import RevokedNode

__all__ = [
    "machine_by_hostname",
    "plan_bind",
    "plan_create_domain",
    "plan_create_machine",
    "plan_create_provision",
    "plan_delete_domain",
    "plan_delete_machine",
    "plan_delete_provision",
    "plan_unbind",
    "plan_update_domain",
    "plan_update_machine",
]


def machine_by_hostname(view: View, hostname: str, *, field: str = "hostname") -> Machine:
    machine = view.lookup(Machine, "hostname", hostname.strip().lower())
    if machine is None:
        raise NotFound(f"no machine {hostname!r} (list machines with: treeherd machine ls)", field=field)
    return machine


# ---- machines -----------------------------------------------------------------------------------
def plan_create_machine(
    view: View, request: MachineCreate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    hostname = validate.hostname(request.hostname)
    if view.lookup(Machine, "hostname", hostname) is not None:
        raise AlreadyExists(f"machine {hostname!r} is already in the inventory", field="hostname")
    validate.labels(dict(request.labels))
    validate.non_negative(request.cpus, field="cpus")
    validate.non_negative(request.memory_bytes, field="memory_bytes")
    machine = Machine(
        id=new_id(),
        created_at=now,
        updated_at=now,
        hostname=hostname,
        ips=validate.ip_list(request.ips),
        machine_kind=request.machine_kind,
        labels=dict(sorted(request.labels.items())),
        cpus=request.cpus,
        memory_bytes=request.memory_bytes,
    )
    return [Create(machine)]


def plan_update_machine(view: View, hostname: str, request: MachineUpdate, now: datetime) -> list[Op]:
    machine = machine_by_hostname(view, hostname)
    check_version(machine, request.version)
    validate.labels(request.labels)
    changes: dict[str, object] = {"labels": merge_patch(machine.labels, request.labels), "updated_at": now}
    if request.ips is not UNSET:
        changes["ips"] = validate.ip_list(request.ips)
    if request.cpus is not UNSET:
        validate.non_negative(request.cpus, field="cpus")
        changes["cpus"] = request.cpus
    if request.memory_bytes is not UNSET:
        validate.non_negative(request.memory_bytes, field="memory_bytes")
        changes["memory_bytes"] = request.memory_bytes
    if request.availability is not UNSET:
        changes["availability"] = request.availability
    if request.role is not UNSET:
        changes["role"] = request.role
    if request.machine_kind is not UNSET and request.machine_kind != machine.machine_kind:
        for binding in view.referrers(Binding, "machine", machine.id):
            node = view.get(TreeNode, binding.node_id)
            assert node is not None
            _mix_guard(view, node, request.machine_kind, exclude=machine.id)
        changes["machine_kind"] = request.machine_kind
    return [Update(msgspec.structs.replace(machine, **changes))]


def plan_delete_machine(
    view: View,
    hostname: str,
    *,
    force: bool,
    now: datetime,
    new_id: Callable[[], str],
    version: int | None = None,
) -> list[Op]:
    """Remove a machine (with its bindings when forced). A machine whose agent holds a node certificate
    leaves a revocation behind: that certificate opens no session again."""
    machine = machine_by_hostname(view, hostname)
    check_version(machine, version)
    bindings = view.referrers(Binding, "machine", machine.id)
    if bindings and not force:
        paths = sorted(_path(view, b.node_id) for b in bindings)
        raise Refused(
            f"machine {machine.hostname!r} is bound to {', '.join(paths)}: unbind it first, or delete with"
            " --force to remove its bindings too"
        )
    revoked: list[Op] = []
    if machine.node_identity is not None:
        revoked.append(
            Create(
                RevokedNode(
                    id=new_id(),
                    created_at=now,
                    updated_at=now,
                    node_identity=machine.node_identity,
                    hostname=machine.hostname,
                )
            )
        )
    return [*(Delete(b) for b in bindings), Delete(machine), *revoked]


# ---- bindings -----------------------------------------------------------------------------------
def _mix_guard(view: View, node: TreeNode, kind: MachineKind, *, exclude: str) -> None:
    """Refuse a machine of `kind` at `node` when the node holds machines of the other kind.

    This gives the caller a clear message; the store checks the same invariant on the state each
    transaction lands on (core.tree.integrity), which also covers plans racing each other.
    """
    for binding in view.referrers(Binding, "node", node.id):
        if binding.machine_id == exclude:
            continue
        other = view.get(Machine, binding.machine_id)
        assert other is not None
        if other.machine_kind != kind:
            raise Refused(
                f"{node.path!r} holds {other.machine_kind} machines (such as {other.hostname!r}); physical and"
                f" virtual machines are never mixed in one node: bind this {kind} machine elsewhere",
                field="node",
            )
        return  # every machine at a node has the same kind: one peer decides


def plan_bind(
    view: View, hostname: str, request: BindRequest, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    """Bind a machine to a node with a weight; binding again changes the weight."""
    machine = machine_by_hostname(view, hostname)
    node = node_by_path(view, request.node, field="node")
    validate.weight(request.weight)
    existing = view.lookup(Binding, "pair", binding_key(machine.id, node.id))
    if existing is not None:
        return [
            Update(msgspec.structs.replace(existing, weight=request.weight, updated_at=now)),
            Assert(machine),
        ]
    _mix_guard(view, node, machine.machine_kind, exclude=machine.id)
    binding = Binding(
        id=new_id(),
        created_at=now,
        updated_at=now,
        machine_id=machine.id,
        node_id=node.id,
        weight=request.weight,
    )
    return [Create(binding), Assert(machine)]


def plan_unbind(view: View, hostname: str, path: str) -> list[Op]:
    machine = machine_by_hostname(view, hostname)
    node = node_by_path(view, path, field="node")
    binding = view.lookup(Binding, "pair", binding_key(machine.id, node.id))
    if binding is None:
        raise NotFound(f"machine {machine.hostname!r} is not bound to {node.path!r}", field="node")
    return [Delete(binding)]


def _path(view: View, node_id: str) -> str:
    node = view.get(TreeNode, node_id)
    return node.path if node is not None else node_id


# ---- domains ------------------------------------------------------------------------------------
def _check_ports(ports: list[DomainPort], cert: str | None, key: str | None) -> list[DomainPort]:
    if not ports:
        raise InvalidInput(
            "a domain needs at least one port (e.g. --port 80 or --port 443:ssl)", field="ports"
        )
    seen: set[int] = set()
    for entry in ports:
        validate.port(entry.port, field="ports")
        if entry.port in seen:
            raise InvalidInput(f"port {entry.port} is listed twice", field="ports")
        seen.add(entry.port)
    ssl_ports = [p.port for p in ports if p.ssl]
    if ssl_ports and (not cert or not key):
        missing = " and ".join(
            name for name, value in (("ssl_cert_path", cert), ("ssl_key_path", key)) if not value
        )
        raise InvalidInput(
            f"port {ssl_ports[0]} has ssl, so the domain needs {missing} (--ssl-cert FILE --ssl-key FILE)",
            field="ssl_cert_path" if not cert else "ssl_key_path",
        )
    return sorted(ports, key=lambda p: p.port)


def plan_create_domain(
    view: View, request: DomainCreate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    name = validate.domain_name(request.name)
    if view.lookup(Domain, "name", name) is not None:
        raise AlreadyExists(f"domain {name!r} already exists", field="name")
    cert = _optional_path(request.ssl_cert_path, "ssl_cert_path")
    key = _optional_path(request.ssl_key_path, "ssl_key_path")
    ports = _check_ports(list(request.ports), cert, key)
    access = _optional_path(request.access_log_path, "access_log_path") or default_access_log(name)
    error = _optional_path(request.error_log_path, "error_log_path") or default_error_log(name)
    domain = Domain(
        id=new_id(),
        created_at=now,
        updated_at=now,
        name=name,
        ports=ports,
        access_log_path=access,
        error_log_path=error,
        ssl_cert_path=cert,
        ssl_key_path=key,
    )
    return [Create(domain)]


def default_access_log(name: str) -> str:
    """The seed's default access log name: `${domain}_access.log`."""
    return f"{name.replace('*', '_')}_access.log"


def default_error_log(name: str) -> str:
    """The seed's default error log name: `${domain}_error.log`."""
    return f"{name.replace('*', '_')}_error.log"


def _optional_path(value: str | None, field: str) -> str | None:
    return None if value is None or value == "" else validate.file_path(value, field=field)


def plan_update_domain(view: View, name: str, request: DomainUpdate, now: datetime) -> list[Op]:
    domain = domain_by_name(view, name, field="name")
    check_version(domain, request.version)
    cert = domain.ssl_cert_path
    key = domain.ssl_key_path
    if request.ssl_cert_path is not UNSET:
        cert = _optional_path(request.ssl_cert_path, "ssl_cert_path")
    if request.ssl_key_path is not UNSET:
        key = _optional_path(request.ssl_key_path, "ssl_key_path")
    ports = _check_ports(list(domain.ports if request.ports is UNSET else request.ports), cert, key)
    changes: dict[str, object] = {
        "ports": ports,
        "ssl_cert_path": cert,
        "ssl_key_path": key,
        "updated_at": now,
    }
    if request.access_log_path is not UNSET:
        changes["access_log_path"] = _optional_path(request.access_log_path, "access_log_path") or (
            default_access_log(domain.name)
        )
    if request.error_log_path is not UNSET:
        changes["error_log_path"] = _optional_path(request.error_log_path, "error_log_path") or (
            default_error_log(domain.name)
        )
    return [Update(msgspec.structs.replace(domain, **changes))]


def plan_delete_domain(view: View, name: str, *, version: int | None = None) -> list[Op]:
    domain = domain_by_name(view, name, field="name")
    check_version(domain, version)
    users = sorted(n.path for n in view.referrers(TreeNode, "route_domain", domain.id))
    if users:
        raise Refused(
            f"domain {domain.name!r} is still routed to by {', '.join(users)}: remove those routes first"
            f" (treeherd route rm PATH --domain {domain.name} --uri URI)"
        )
    return [Delete(domain)]


# ---- provisioning -------------------------------------------------------------------------------
def plan_create_provision(
    view: View, request: ProvisionCreate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    hostname = validate.hostname(request.hostname)
    node = node_by_path(view, request.node, field="node")
    existing = view.lookup(ProvisioningRecord, "hostname", hostname)
    if existing is not None:
        raise AlreadyExists(
            f"{hostname!r} is already being provisioned for {_path(view, existing.node_id)!r}:"
            f" remove that record first (treeherd provision rm {hostname})",
            field="hostname",
        )
    record = ProvisioningRecord(
        id=new_id(), created_at=now, updated_at=now, hostname=hostname, node_id=node.id
    )
    return [Create(record), Assert(node)]


def plan_delete_provision(view: View, hostname: str) -> list[Op]:
    record = view.lookup(ProvisioningRecord, "hostname", hostname.strip().lower())
    if record is None:
        raise NotFound(f"no provisioning record for {hostname!r}", field="hostname")
    return [Delete(record)]
