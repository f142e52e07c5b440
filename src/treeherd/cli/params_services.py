"""Option parsing for service commands: durations, ports, the task spec and the update policies built
from options."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec

from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.services import PortSpec, TaskSpec, UpdatePolicy

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


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
    return fn


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
