"""Checks on what a service request says, before anything is written: its name, its task spec (command,
environment, ports, health check, resources, constraints, the services it names, its image) and its
update policies. Each raises InvalidInput (or NotFound) naming the field."""

from __future__ import annotations

import re

from treeherd.core.tasks.images import image_reference_problem
from treeherd.core.tasks.scheduling.constraints import parse_constraint
from treeherd.core.tasks.task_env import env_var_name
from treeherd.core.view import View
from treeherd.model.errors import InvalidInput, NotFound
from treeherd.model.ops import Assert, Op
from treeherd.model.services import Service, TaskSpec, UpdatePolicy

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
    if spec.image is not None and (problem := image_reference_problem(spec.image)):
        raise InvalidInput(problem, field="task.image")
    if spec.user is not None and not spec.user.strip():
        raise InvalidInput("the user is empty: give NAME, UID or UID:GID", field="task.user")
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


def check_replicas(replicas: int) -> None:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, not {replicas}", field="replicas")
