"""Plans for services: create, update, scale and remove, with every check on the spec.

Bad input is refused before anything is written: unknown tree node, unknown service in Conflicts or
MachineOf, a malformed constraint, negative replicas, limits below reservations, duplicate port names.
A constraint that no machine satisfies is accepted: its tasks stay pending and say why.
A change of spec keeps the one it replaces (`previous_task`, what a rollback returns to) and starts an
update (`core.tasks.rollout` rolls it); any update of a service whose update is paused resumes it.
A change of spec with a canary starts a canary instead (`core.tasks.canary`), which is promoted or
aborted later (by hand here, or by the manager's judge).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

import msgspec
from msgspec import UNSET

from treeherd.core.tasks.canary import aborted, canary_size, canary_started, promoted, under_canary
from treeherd.core.tasks.rollout import ACTIVE, PAUSED, rolled_back
from treeherd.core.tasks.scheduling.constraints import parse_constraint
from treeherd.core.tasks.task_env import env_var_name
from treeherd.core.tree.nodes import check_version, node_by_path
from treeherd.core.view import View
from treeherd.model.discovery import Dependency
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound
from treeherd.model.ops import Assert, Create, Op, Update
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, TaskSpec, UpdatePolicy, UpdateStatus

MAX_REPLICAS = 1_000_000
MAX_STOP_GRACE_S = 3600.0
_SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def service_by_name(view: View, name: str, *, field: str = "name") -> Service:
    service = view.lookup(Service, "name", name)
    if service is None:
        raise NotFound(f"no service {name!r} (list services with: treeherd service ls)", field=field)
    return service


def validate_name(name: str) -> str:
    if not _SERVICE_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid service name {name!r}: 1-63 lower-case letters, digits, '-' or '_', starting and ending"
            " with a letter or digit",
            field="name",
        )
    return name


def validate_spec(view: View, spec: TaskSpec, *, own_name: str) -> list[Op]:
    """Check a task spec; returns Asserts on the services it names (Conflicts, MachineOf)."""
    if not spec.command or not spec.command[0]:
        raise InvalidInput("the task needs a command: put it after '--'", field="task.command")
    for key in spec.env:
        if not _ENV_NAME.fullmatch(key):
            raise InvalidInput(f"invalid environment variable name {key!r}", field="task.env")
    if spec.workdir is not None and not spec.workdir.startswith("/"):
        raise InvalidInput(
            f"the working directory must be an absolute path, not {spec.workdir!r}", field="task.workdir"
        )
    _check_resources(spec)
    restart = spec.restart
    for name, value in (("delay_s", restart.delay_s), ("window_s", restart.window_s)):
        if value < 0:
            raise InvalidInput(f"restart {name} must not be negative", field=f"task.restart.{name}")
    if not 0 <= spec.stop_grace_s <= MAX_STOP_GRACE_S:
        raise InvalidInput(
            f"stop grace period {spec.stop_grace_s:g}s is out of range: use 0 to {MAX_STOP_GRACE_S:g}s",
            field="task.stop_grace_s",
        )
    if restart.max_attempts < 0:
        raise InvalidInput("restart max_attempts must not be negative", field="task.restart.max_attempts")
    placement = spec.placement
    for text in placement.constraints:
        parse_constraint(text)
    if placement.max_per_node < 0:
        raise InvalidInput("max_per_node must not be negative", field="task.placement.max_per_node")
    asserts: list[Op] = []
    for field, names in (
        ("task.requires", spec.requires),
        ("task.binds_to", [spec.binds_to] if spec.binds_to else []),
        ("task.placement.conflicts", placement.conflicts),
        ("task.placement.machine_of", [placement.machine_of] if placement.machine_of else []),
    ):
        for name in names:
            if name == own_name and field.endswith("conflicts"):
                continue  # conflicting with itself: at most one task per machine, as in fleet
            if name == own_name and field.endswith(("requires", "binds_to")):
                raise InvalidInput(f"a service cannot name itself in {field.rsplit('.', 1)[1]}", field=field)
            other = view.lookup(Service, "name", name)
            if other is None:
                raise NotFound(f"{field.rsplit('.', 1)[1]} names an unknown service {name!r}", field=field)
            asserts.append(Assert(other))
    if placement.machine_of == own_name:
        raise InvalidInput("a service cannot be its own MachineOf", field="task.placement.machine_of")
    seen: set[str] = set()
    for port in spec.ports:
        if not _PORT_NAME.fullmatch(port.name):
            raise InvalidInput(
                f"invalid port name {port.name!r}: lower-case letters, digits, '_' (it becomes"
                f" TREEHERD_PORT_{env_var_name(port.name)})",
                field="task.ports",
            )
        if port.name in seen:
            raise InvalidInput(f"port {port.name!r} is listed twice", field="task.ports")
        seen.add(port.name)
        if port.port is not None and not 1 <= port.port <= 65535:
            raise InvalidInput(f"port {port.port} is out of range: use 1-65535", field="task.ports")
    _check_health(spec)
    return asserts


def _check_health(spec: TaskSpec) -> None:
    check = spec.health
    if check is None:
        return
    field = "task.health"
    for name in ("interval_s", "timeout_s"):
        if not getattr(check, name) > 0:
            raise InvalidInput(f"the health check's {name} must be more than 0", field=f"{field}.{name}")
    if check.start_period_s < 0:
        raise InvalidInput(
            "the health check's start period must not be negative", field=f"{field}.start_period_s"
        )
    if check.retries < 1:
        raise InvalidInput("the health check's retries must be at least 1", field=f"{field}.retries")
    if check.kind == "cmd":
        if not check.command or not check.command[0]:
            raise InvalidInput("a command health check needs a command", field=f"{field}.command")
        return
    if not spec.ports:
        raise InvalidInput(
            f"an {check.kind} health check needs a port: add --port NAME to the service",
            field=f"{field}.port",
        )
    if check.port is not None and check.port not in {p.name for p in spec.ports}:
        raise InvalidInput(
            f"the health check names port {check.port!r}, which the service does not publish",
            field=f"{field}.port",
        )
    if check.kind == "http" and not check.path.startswith("/"):
        raise InvalidInput(
            f"the health check path must start with '/', not {check.path!r}", field=f"{field}.path"
        )


def _check_resources(spec: TaskSpec) -> None:
    res = spec.resources
    for name in ("reserve_cpus", "reserve_memory", "limit_cpus", "limit_memory", "limit_pids"):
        if getattr(res, name) < 0:
            raise InvalidInput(f"{name} must not be negative", field=f"task.resources.{name}")
    if res.limit_cpus and res.limit_cpus < res.reserve_cpus:
        raise InvalidInput(
            f"the CPU limit ({res.limit_cpus:g}) is below the reservation ({res.reserve_cpus:g})",
            field="task.resources.limit_cpus",
        )
    if res.limit_memory and res.limit_memory < res.reserve_memory:
        raise InvalidInput(
            f"the memory limit ({res.limit_memory}) is below the reservation ({res.reserve_memory})",
            field="task.resources.limit_memory",
        )


def check_policy(policy: UpdatePolicy, field: str) -> None:
    """The bounds the request schema declares, for plans made without decoding a request."""
    if policy.parallelism < 0:
        raise InvalidInput(
            f"{field} parallelism must not be negative (0 replaces every slot at once)",
            field=f"{field}.parallelism",
        )
    if not 0 <= policy.max_failure_ratio <= 1:
        raise InvalidInput(
            f"{field} max failure ratio must be between 0 and 1, not {policy.max_failure_ratio:g}",
            field=f"{field}.max_failure_ratio",
        )
    for name in ("delay_s", "monitor_s"):
        if getattr(policy, name) < 0:
            raise InvalidInput(f"{field} {name} must not be negative", field=f"{field}.{name}")


def _check_replicas(replicas: int) -> None:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, not {replicas}", field="replicas")


def plan_create_service(
    view: View, request: ServiceCreate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    name = validate_name(request.name)
    if view.lookup(Service, "name", name) is not None:
        raise AlreadyExists(f"service {name!r} already exists", field="name")
    node = node_by_path(view, request.node, field="node")
    _check_replicas(request.replicas)
    check_policy(request.update, "update")
    check_policy(request.rollback, "rollback")
    asserts = validate_spec(view, request.task, own_name=name)
    task, port_ops = resolve_dependencies(view, request.task, own_name=name)
    service = Service(
        id=new_id(),
        created_at=now,
        updated_at=now,
        name=name,
        node_id=node.id,
        mode=request.mode,
        replicas=request.replicas if request.mode == "replicated" else 0,
        task=task,
        on_node_down=request.on_node_down,
        update=request.update,
        rollback=request.rollback,
    )
    return [Create(service), Assert(node), *_without_updated(asserts, port_ops), *port_ops]


def plan_update_service(view: View, name: str, request: ServiceUpdate, now: datetime) -> list[Op]:
    service = service_by_name(view, name)
    check_version(service, request.version)
    if service.removing:
        raise NotFound(f"service {name!r} is being removed", field="name")
    changes: dict[str, object] = {"updated_at": now}
    asserts: list[Op] = []
    if request.replicas is not UNSET:
        if service.mode == "global":
            raise InvalidInput(
                f"service {name!r} is global: it runs one task per eligible machine", field="replicas"
            )
        _check_replicas(request.replicas)
        changes["replicas"] = request.replicas
    if request.on_node_down is not UNSET:
        changes["on_node_down"] = request.on_node_down  # decides at the next machine loss: no redeploy
    for field in ("update", "rollback"):
        policy = getattr(request, field)
        if policy is not UNSET:
            check_policy(policy, field)
            changes[field] = policy
    task = service.task
    if request.task is not UNSET:
        # Compared once resolved: a dependency given without its local port is the same as with it.
        task, port_ops = resolve_dependencies(view, request.task, own_name=name)
        if task != service.task:
            asserts = validate_spec(view, request.task, own_name=name)
            asserts = [*_without_updated(asserts, port_ops), *port_ops]
    if request.force:
        task = msgspec.structs.replace(task, force_update=service.task.force_update + 1)
    status = service.update_status
    if request.canary is not None and task == service.task:
        raise InvalidInput(
            "a canary needs a change of the task spec (or --force): nothing would be tried on it",
            field="canary",
        )
    if task != service.task:
        changes["task"] = task
        changes["previous_task"] = service.task
        changes["spec_version"] = service.spec_version + 1
        changes["update_status"] = UpdateStatus(
            state="updating", started_at=now, message="update in progress"
        )
        if request.canary is not None:
            sized = msgspec.structs.replace(service, replicas=changes.get("replicas", service.replicas))
            size = canary_size(sized, request.canary)
            changes["update_status"] = canary_started(request.canary, size, now)
    elif status is not None and status.state in PAUSED:
        # Resumed from the current state: the failures counted so far are forgotten.
        resumed = (
            UpdateStatus(state="rollback_started", started_at=now, message="rollback resumed")
            if status.state == "rollback_paused"
            else UpdateStatus(state="updating", started_at=now, message="update resumed")
        )
        changes["update_status"] = resumed
    return [Update(msgspec.structs.replace(service, **changes)), *asserts]


def plan_rollback_service(view: View, name: str, now: datetime) -> list[Op]:
    """Back to the spec before the latest change, replaced with the rollback policy."""
    service = service_by_name(view, name)
    if service.removing:
        raise NotFound(f"service {name!r} is being removed", field="name")
    if service.previous_task is None:
        raise InvalidInput(
            f"service {name!r} has no previous spec to roll back to: it was never updated", field="name"
        )
    status = service.update_status
    if status is not None and status.state in ACTIVE and status.state.startswith("rollback"):
        raise InvalidInput(f"service {name!r} is being rolled back already", field="name")
    return [Update(rolled_back(service, now, "rollback requested"))]


def _canary_of(view: View, name: str) -> Service:
    service = service_by_name(view, name)
    if not under_canary(service):
        status = service.update_status
        now = f"its update is {status.state}" if status is not None else "it was never updated"
        raise InvalidInput(
            f"service {name!r} has no canary to act on ({now}): start one with"
            " treeherd service update NAME --canary N ...",
            field="name",
        )
    return service


def plan_promote_service(view: View, name: str, now: datetime) -> list[Op]:
    """Promote a service's canary: the other slots get the new spec with the update policy."""
    return [Update(promoted(_canary_of(view, name), now, "by hand"))]


def plan_abort_service(view: View, name: str, now: datetime) -> list[Op]:
    """Abort a service's canary: its slots get the previous spec back with the rollback policy."""
    return [Update(aborted(_canary_of(view, name), now, "by hand"))]


def _without_updated(asserts: list[Op], updates: list[Op]) -> list[Op]:
    """Asserts of objects the same transaction updates anyway (the update checks the version too)."""
    updated = {op.object.id for op in updates}
    return [op for op in asserts if op.object.id not in updated]


def plan_remove_service(view: View, name: str, now: datetime) -> list[Op]:
    """Mark a service for removal: the orchestrator stops its tasks, then deletes it and them."""
    service = service_by_name(view, name)
    users = [s.name for s in view.all(Service) if s.id != service.id and s.task.placement.machine_of == name]
    if users and not service.removing:
        raise InvalidInput(
            f"services {', '.join(sorted(users))} run only beside {name!r} (MachineOf): remove or change them first",
            field="name",
        )
    if service.removing:
        return [Assert(service)]
    return [Update(msgspec.structs.replace(service, removing=True, updated_at=now))]


LOCAL_PORTS = (20000, 29999)  # the cluster's range for dependencies' local ports


def resolve_dependencies(view: View, spec: TaskSpec, *, own_name: str) -> tuple[TaskSpec, list[Op]]:
    """The spec with every dependency's local port filled in, and the updates that record newly chosen
    ports on the depended-upon services (the port is the same on every host, so it belongs to them)."""
    if not spec.depends_on:
        return spec, []
    services = {s.name: s for s in view.all(Service)}
    taken = {s.local_port: s.name for s in services.values() if s.local_port is not None}
    resolved: list[Dependency] = []
    ops: list[Op] = []
    seen: set[str] = set()
    for dependency in spec.depends_on:
        field = "task.depends_on"
        if dependency.service == own_name:
            raise InvalidInput("a service cannot depend on itself", field=field)
        if dependency.service in seen:
            raise InvalidInput(f"{dependency.service!r} is listed twice", field=field)
        seen.add(dependency.service)
        target = services.get(dependency.service)
        if target is None:
            raise NotFound(f"depends on an unknown service {dependency.service!r}", field=field)
        port = dependency.local_port
        if port is not None and not 1 <= port <= 65535:
            raise InvalidInput(f"local port {port} is out of range: use 1-65535", field=field)
        if target.local_port is not None:
            if port is not None and port != target.local_port:
                raise InvalidInput(
                    f"{target.name} is reached at 127.0.0.1:{target.local_port} on every host: use that port"
                    " or leave it out",
                    field=field,
                )
            port = target.local_port
        else:
            if port is not None and port in taken:
                raise InvalidInput(
                    f"local port {port} is already taken by {taken[port]}: choose another or leave it out",
                    field=field,
                )
            if port is None:
                port = next((p for p in range(LOCAL_PORTS[0], LOCAL_PORTS[1] + 1) if p not in taken), None)
                if port is None:
                    raise InvalidInput(
                        f"no free local port in {LOCAL_PORTS[0]}-{LOCAL_PORTS[1]}", field=field
                    )
            taken[port] = target.name
            ops.append(Update(msgspec.structs.replace(target, local_port=port)))
        resolved.append(Dependency(service=target.name, local_port=port))
    return msgspec.structs.replace(spec, depends_on=resolved), ops
