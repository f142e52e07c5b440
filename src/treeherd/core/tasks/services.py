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

from collections.abc import Callable
from datetime import datetime

import msgspec
from msgspec import UNSET

from treeherd.core.tasks.canary import aborted, canary_size, canary_started, promoted, under_canary
from treeherd.core.tasks.rollout import ACTIVE, PAUSED, rolled_back
from treeherd.core.tasks.service_checks import (
    check_policy,
    check_replicas,
    service_by_name,
    validate_name,
    validate_spec,
)
from treeherd.core.tree.nodes import check_version, node_by_path
from treeherd.core.view import View
from treeherd.model.discovery import Dependency
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound
from treeherd.model.ops import Assert, Create, Op, Update
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, TaskSpec, UpdateStatus


def plan_create_service(
    view: View, request: ServiceCreate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    name = validate_name(request.name)
    if view.lookup(Service, "name", name) is not None:
        raise AlreadyExists(f"service {name!r} already exists", field="name")
    node = node_by_path(view, request.node, field="node")
    check_replicas(request.replicas)
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
        check_replicas(request.replicas)
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
    spec, ops = previous_spec(view, service)
    restored = msgspec.structs.replace(service, previous_task=spec)
    return [Update(rolled_back(restored, now, "rollback requested")), *ops]


def previous_spec(view: View, service: Service) -> tuple[TaskSpec, list[Op]]:
    """The spec a rollback would restore, checked as a new spec would be (a service it names may be
    gone since, say), with the operations its dependencies need; InvalidInput says why it no longer
    validates."""
    assert service.previous_task is not None
    try:
        asserts = validate_spec(view, service.previous_task, own_name=service.name)
        spec, port_ops = resolve_dependencies(view, service.previous_task, own_name=service.name)
    except (InvalidInput, NotFound) as error:
        raise InvalidInput(
            f"service {service.name!r} cannot be rolled back: its previous spec no longer validates"
            f" ({error.detail}); give it a spec with `treeherd service update` instead",
            field=error.field,
        ) from None
    return spec, [*_without_updated(asserts, port_ops), *port_ops]


def rollback_refusal(view: View, service: Service) -> str | None:
    """Why an automatic rollback of the service would be refused (its previous spec no longer
    validates), or None: the orchestrator hands this to the updater."""
    status = service.update_status
    if service.previous_task is None or status is None or status.state != "updating":
        return None
    if service.update.failure_action != "rollback":
        return None
    try:
        previous_spec(view, service)
    except InvalidInput as error:
        return error.detail
    return None


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
