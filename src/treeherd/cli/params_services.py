"""Option parsing for service commands: durations, ports, the task spec and the update policies built
from options."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec

from treeherd.cli.params import key_values, size
from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.services import CanaryPolicy, PortSpec, TaskSpec, UpdatePolicy

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(text: str, option: str) -> float:
    """Seconds from `500ms`, `5s`, `2m`, `1h` or a plain number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 5s, 500ms or 2m", param_hint=option)
    return float(match.group(1)) * _UNITS[match.group(2)]


def port(text: str) -> PortSpec:
    """`NAME` (a host port is allocated) or `NAME:PORT`."""
    name, _, number = text.partition(":")
    if number and not number.isdigit():
        raise click.BadParameter(f"{text!r} is not NAME or NAME:PORT", param_hint="--port")
    return PortSpec(name=name, port=int(number) if number else None)


def with_health(spec: TaskSpec, o: dict[str, Any]) -> TaskSpec:
    """The spec with the health-check options applied (update: on top of its current check)."""
    kinds = [
        kind
        for kind, given in (("cmd", o["health_cmd"]), ("http", o["health_http"]), ("tcp", o["health_tcp"]))
        if given
    ]
    if len(kinds) > 1:
        raise click.UsageError("give one of --health-cmd, --health-http and --health-tcp")
    tuning = {
        "port": o["health_port"],
        "interval_s": _maybe_duration(o["health_interval"], "--health-interval"),
        "timeout_s": _maybe_duration(o["health_timeout"], "--health-timeout"),
        "retries": o["health_retries"],
        "start_period_s": _maybe_duration(o["health_start_period"], "--health-start-period"),
        "restart": o["health_restart"],
    }
    given = {name: value for name, value in tuning.items() if value is not None}
    check = spec.health
    if kinds:
        kind = kinds[0]
        fields: dict[str, Any] = {"kind": kind}
        if kind == "cmd":
            fields["command"] = ["sh", "-c", o["health_cmd"]]
        elif kind == "http":
            fields["path"] = o["health_http"]
        check = HealthCheck(**fields) if check is None else msgspec.structs.replace(check, **fields)
    elif given and check is None:
        raise click.UsageError("health options need a check: --health-cmd, --health-http or --health-tcp")
    if check is not None and given:
        check = msgspec.structs.replace(check, **given)
    return msgspec.structs.replace(spec, health=check) if check is not spec.health else spec


def dependency(text: str) -> Dependency:
    """SVC or SVC:LOCALPORT."""
    name, sep, port = text.partition(":")
    if not name or (sep and not port.isdigit()):
        raise click.BadParameter(f"{text!r} is not SVC or SVC:LOCALPORT", param_hint="--depends-on")
    return Dependency(service=name, local_port=int(port) if sep else None)


def _maybe_duration(text: str | None, option: str) -> float | None:
    return None if text is None else duration(text, option)


ORDERS = click.Choice(["stop-first", "start-first"])
FAILURE_ACTIONS = click.Choice(["pause", "continue", "rollback"])
NODE_DOWN_ACTIONS = click.Choice(["replace", "wait"])


def policy_options(fn: F) -> F:
    """`--update-*` and `--rollback-*`: how a changed spec (and a rollback) reaches the tasks."""
    for kind in ("rollback", "update"):
        what = "slots replaced at once" if kind == "update" else "slots rolled back at once"
        for option in reversed(
            [
                click.option(f"--{kind}-parallelism", type=int, help=f"{what} (default 1; 0: all)"),
                click.option(f"--{kind}-delay", metavar="DURATION", help="between batches (default 0s)"),
                click.option(
                    f"--{kind}-order", type=ORDERS, help="stop the old task first, or start the new one first"
                ),
                click.option(
                    f"--{kind}-monitor",
                    metavar="DURATION",
                    help="how long a new task must stay running (and healthy) to count as a success (5s)",
                ),
                click.option(
                    f"--{kind}-failure-action", type=FAILURE_ACTIONS, help="when too many slots fail (pause)"
                ),
                click.option(
                    f"--{kind}-max-failure-ratio",
                    type=float,
                    help="the share of slots that may fail before the failure action (0 to 1; default 0)",
                ),
            ]
        ):
            fn = option(fn)
    return click.option(
        "--on-node-down",
        type=NODE_DOWN_ACTIONS,
        help="a task whose machine goes down: replaced elsewhere at once (replace, the default), or kept"
        " until the machine returns, so that a slot never runs twice (wait)",
    )(fn)


def build_policy(base: UpdatePolicy, kind: str, o: dict[str, Any]) -> UpdatePolicy:
    """The `--update-*` (or `--rollback-*`) options on top of `base`."""
    changes: dict[str, Any] = {}
    for name, field in (
        ("parallelism", "parallelism"),
        ("order", "order"),
        ("failure_action", "failure_action"),
        ("max_failure_ratio", "max_failure_ratio"),
    ):
        if o[f"{kind}_{name}"] is not None:
            changes[field] = o[f"{kind}_{name}"]
    for name in ("delay", "monitor"):
        if o[f"{kind}_{name}"] is not None:
            changes[f"{name}_s"] = duration(o[f"{kind}_{name}"], f"--{kind}-{name}")
    return msgspec.structs.replace(base, **changes) if changes else base


def canary_options(fn: F) -> F:
    """`--canary N|P%` and how the canary is judged (`service update`)."""
    for option in reversed(
        [
            click.option(
                "--canary",
                metavar="N|P%",
                help="put the new spec on N tasks (or P%% of the replicas, at least one) beside the old"
                " ones, judged by the gateways' figures; then service promote or service abort",
            ),
            click.option(
                "--canary-window",
                metavar="DURATION",
                help="how long the canary is judged before it can be promoted (default 5m)",
            ),
            click.option(
                "--canary-margin",
                type=float,
                help="percentage points of availability the canary may lose against the old tasks (0.5)",
            ),
            click.option(
                "--canary-min-requests", type=int, help="requests to the canary before it is judged (100)"
            ),
            click.option(
                "--canary-latency-factor",
                type=float,
                help="the canary's p99 latency may be this many times the old tasks' (1.5)",
            ),
            click.option(
                "--canary-auto-promote",
                is_flag=True,
                help="promote the canary once the window has passed with enough requests",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def build_canary(o: dict[str, Any]) -> CanaryPolicy | None:
    """The canary the `--canary*` options ask for (None without `--canary`)."""
    given = [name for name in _CANARY_TUNING if o[f"canary_{name}"] not in (None, False)]
    text = o["canary"]
    if text is None:
        if given:
            raise click.UsageError(f"--canary-{given[0].replace('_', '-')} needs --canary N or --canary P%")
        return None
    size = text.strip()
    fields: dict[str, Any] = {}
    try:
        if size.endswith("%"):
            fields["percent"] = float(size[:-1])
        else:
            fields["tasks"] = int(size)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number of tasks or a percentage", param_hint="--canary"
        ) from None
    if o["canary_window"] is not None:
        fields["window_s"] = duration(o["canary_window"], "--canary-window")
    for name in ("margin", "min_requests", "latency_factor", "auto_promote"):
        if o[f"canary_{name}"] not in (None, False):
            fields[name] = o[f"canary_{name}"]
    return CanaryPolicy(**fields)


_CANARY_TUNING = ("window", "margin", "min_requests", "latency_factor", "auto_promote")
CONDITIONS = click.Choice(["none", "on-failure", "any"])


def spec_options(fn: F) -> F:
    """The task-spec options shared by create and update (update changes only what is given)."""
    for option in reversed(
        [
            click.option("--env", "env", multiple=True, metavar="K=V", help="an environment variable"),
            click.option("--workdir", metavar="DIR", help="working directory (absolute)"),
            click.option(
                "--image",
                metavar="REF",
                help="run in a container of this local image (ID or tag; never pulled): the docker executor",
            ),
            click.option("--user", metavar="USER", help="run as NAME, UID or UID:GID of the image (docker)"),
            click.option("--reserve-cpu", type=float, help="CPUs the scheduler sets aside"),
            click.option("--reserve-memory", metavar="SIZE", help="memory the scheduler sets aside"),
            click.option("--limit-cpu", type=float, help="CPU limit enforced on the task"),
            click.option("--limit-memory", metavar="SIZE", help="memory limit enforced on the task"),
            click.option("--limit-pids", type=int, help="most processes the task may have at once"),
            click.option(
                "--limits",
                "limits_mode",
                type=click.Choice(["best-effort", "strict"]),
                help="strict: reject a task whose host cannot enforce its limits (default: run it, with a warning)",
            ),
            click.option(
                "--constraint",
                "constraints",
                multiple=True,
                metavar="EXPR",
                help="e.g. node.labels.disk==ssd, node.kind!=physical",
            ),
            click.option("--max-per-node", type=int, help="at most N tasks of it on one machine"),
            click.option(
                "--conflicts", multiple=True, metavar="SVC", help="never beside SVC (fleet Conflicts)"
            ),
            click.option("--machine-of", metavar="SVC", help="only beside SVC (fleet MachineOf)"),
            click.option("--restart-condition", type=CONDITIONS),
            click.option("--restart-delay", metavar="DURATION", help="e.g. 5s"),
            click.option("--restart-max-attempts", type=int, help="0: no limit"),
            click.option("--restart-window", metavar="DURATION", help="the window max attempts count in"),
            click.option(
                "--depends-on",
                "depends_on",
                multiple=True,
                metavar="SVC[:LOCALPORT]",
                help="reach SVC through this host's haproxy at 127.0.0.1:LOCALPORT (TREEHERD_DEP_SVC)",
            ),
            click.option(
                "--binds-to",
                metavar="SVC",
                help="a sidekick of SVC: one task on each machine running SVC, stopped when SVC stops there",
            ),
            click.option(
                "--requires",
                multiple=True,
                metavar="SVC",
                help="start only once SVC has an endpoint (fleet Requires; repeatable)",
            ),
            click.option("--health-cmd", metavar="CMD", help="a shell command: exit 0 is healthy"),
            click.option(
                "--health-http", metavar="PATH", help="HTTP GET PATH on the task's port: 2xx/3xx is healthy"
            ),
            click.option("--health-tcp", is_flag=True, default=None, help="a TCP connect to the task's port"),
            click.option(
                "--health-port", metavar="NAME", help="the port the check uses (default: the first)"
            ),
            click.option("--health-interval", metavar="DURATION", help="between checks (default 5s)"),
            click.option("--health-timeout", metavar="DURATION", help="for one check (default 2s)"),
            click.option("--health-retries", type=int, help="failures in a row that make it unhealthy (3)"),
            click.option(
                "--health-start-period", metavar="DURATION", help="failures in it do not count (0s)"
            ),
            click.option(
                "--health-restart/--no-health-restart",
                default=None,
                help="fail (and so restart, per the restart policy) a task that turns unhealthy",
            ),
            click.option(
                "--stop-grace-period",
                metavar="DURATION",
                help="how long a task may take to stop after SIGTERM before SIGKILL (default 10s)",
            ),
            click.option(
                "--port",
                "ports",
                multiple=True,
                metavar="NAME[:PORT]",
                help="a named port; without a number one is allocated (TREEHERD_PORT_NAME)",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def build_spec(base: TaskSpec | None, command: tuple[str, ...], o: dict[str, Any]) -> TaskSpec:
    """A task spec from options, on top of `base` (update) or the defaults (create)."""
    spec = base or TaskSpec(command=list(command))
    if command:
        spec = msgspec.structs.replace(spec, command=list(command))
    if o["env"]:
        spec = msgspec.structs.replace(spec, env={**spec.env, **key_values(o["env"], "--env")})
    if o["workdir"] is not None:
        spec = msgspec.structs.replace(spec, workdir=o["workdir"] or None)
    for name in ("image", "user"):  # "" clears it (update)
        if o[name] is not None:
            spec = msgspec.structs.replace(spec, **{name: o[name] or None})
    res: dict[str, Any] = {}
    for option, field, convert in (
        ("reserve_cpu", "reserve_cpus", float),
        ("limit_cpu", "limit_cpus", float),
        ("limit_pids", "limit_pids", int),
        ("limits_mode", "limits", str),
    ):
        if o[option] is not None:
            res[field] = convert(o[option])
    for option, field in (("reserve_memory", "reserve_memory"), ("limit_memory", "limit_memory")):
        if o[option] is not None:
            res[field] = size(o[option], "--" + option.replace("_", "-"))
    if res:
        spec = msgspec.structs.replace(spec, resources=msgspec.structs.replace(spec.resources, **res))
    restart: dict[str, Any] = {}
    if o["restart_condition"]:
        restart["condition"] = o["restart_condition"]
    if o["restart_delay"] is not None:
        restart["delay_s"] = duration(o["restart_delay"], "--restart-delay")
    if o["restart_max_attempts"] is not None:
        restart["max_attempts"] = o["restart_max_attempts"]
    if o["restart_window"] is not None:
        restart["window_s"] = duration(o["restart_window"], "--restart-window")
    if restart:
        spec = msgspec.structs.replace(spec, restart=msgspec.structs.replace(spec.restart, **restart))
    placement: dict[str, Any] = {}
    if o["constraints"]:
        placement["constraints"] = list(o["constraints"])
    if o["max_per_node"] is not None:
        placement["max_per_node"] = o["max_per_node"]
    if o["conflicts"]:
        placement["conflicts"] = list(o["conflicts"])
    if o["machine_of"] is not None:
        placement["machine_of"] = o["machine_of"] or None
    if placement:
        spec = msgspec.structs.replace(spec, placement=msgspec.structs.replace(spec.placement, **placement))
    if o["ports"]:
        spec = msgspec.structs.replace(spec, ports=[port(p) for p in o["ports"]])
    if o["depends_on"]:
        spec = msgspec.structs.replace(spec, depends_on=[dependency(d) for d in o["depends_on"]])
    if o["binds_to"] is not None:
        spec = msgspec.structs.replace(spec, binds_to=o["binds_to"] or None)
    if o["requires"]:
        spec = msgspec.structs.replace(spec, requires=list(o["requires"]))
    spec = with_health(spec, o)
    if o["stop_grace_period"] is not None:
        grace = duration(o["stop_grace_period"], "--stop-grace-period")
        spec = msgspec.structs.replace(spec, stop_grace_s=grace)
    return spec
