"""`treeherd service ...`: services on tree nodes, in the habits of `docker service`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
from msgspec import UNSET

from treeherd.cli.follow import follow_command as _follow
from treeherd.cli.follow import follow_options
from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import (
    FORMAT_OPTION,
    INSPECT_FORMAT_OPTION,
    done,
    inspected,
    listing,
    print_json,
    print_table,
)
from treeherd.cli.params import key_values, size
from treeherd.cli.params_services import (
    build_policy,
    dependency,
    duration,
    policy_options,
    port,
    with_health,
)
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, TaskSpec, UpdatePolicy, UpdateStatus
from treeherd.model.tasks_view import ServiceSummary, TaskRow

SERVICES = "/api/v1/services"
CONDITIONS = click.Choice(["none", "on-failure", "any"])


F = TypeVar("F", bound=Callable[..., Any])


def spec_options(fn: F) -> F:
    """The task-spec options shared by create and update (update changes only what is given)."""
    for option in reversed(
        [
            click.option("--env", "env", multiple=True, metavar="K=V", help="an environment variable"),
            click.option("--workdir", metavar="DIR", help="working directory (absolute)"),
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


@click.group()
def service() -> None:
    """Services: what runs, how many, where, attached to a tree node."""


@service.command("create")
@click.argument("name")
@click.option("--node", required=True, metavar="PATH", help="the tree node the service belongs to")
@click.option("--replicas", type=int, default=None, help="number of tasks (default 1)")
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated", show_default=True)
@spec_options
@policy_options
@follow_options
@click.argument("command", nargs=-1, required=True)
@FORMAT_OPTION
@pass_ctx
def create(
    ctx: Context,
    /,
    name: str,
    node: str,
    replicas: int | None,
    mode: str,
    command: tuple[str, ...],
    fmt: str,
    detach: bool,
    follow: bool,
    **options: Any,
) -> None:
    """Create a service running COMMAND (after --)."""
    if mode == "global" and replicas is not None:
        raise click.UsageError(
            "--replicas does not apply to a global service (one task per eligible machine)"
        )
    request = ServiceCreate(
        name=name,
        node=node,
        mode=mode,  # type: ignore[arg-type]
        replicas=1 if replicas is None else replicas,
        task=build_spec(None, command, options),
        update=build_policy(UpdatePolicy(), "update", options),
        rollback=build_policy(UpdatePolicy(), "rollback", options),
    )
    created = ctx.client.request("POST", SERVICES, request, type=Service)
    done(fmt, created, f"created service {created.name} ({created.id})")
    _follow(ctx, created, detach, follow)


@service.command("ls")
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, fmt: str) -> None:
    """List services."""
    rows = ctx.client.get(SERVICES, list[ServiceSummary])
    listing(
        fmt,
        rows,
        ["NAME", "NODE", "MODE", "REPLICAS", "COMMAND"],
        lambda r: [
            r.service.name + (" (removing)" if r.service.removing else ""),
            r.path,
            r.service.mode,
            f"{r.running}/{r.desired}",
            " ".join(r.service.task.command)[:40],
        ],
    )


@service.command("inspect")
@click.argument("name")
@INSPECT_FORMAT_OPTION
@pass_ctx
def inspect(ctx: Context, name: str, fmt: str) -> None:
    """Show a service (as JSON by default)."""
    inspected(fmt, ctx.client.get(f"{SERVICES}/{name}", ServiceSummary))


@service.command("ps")
@click.argument("name")
@click.option("--current", is_flag=True, help="only the tasks meant to run, no history")
@FORMAT_OPTION
@pass_ctx
def ps(ctx: Context, name: str, current: bool, fmt: str) -> None:
    """A service's tasks by slot: the current one, then its history (indented)."""
    rows = ctx.client.get(f"{SERVICES}/{name}/tasks", list[TaskRow], all=not current)
    if fmt == "json":
        print_json(rows)
        return
    line = update_line(ctx.client.get(f"{SERVICES}/{name}", ServiceSummary).service.update_status)
    if line is not None:
        click.echo(line)
    table: list[list[Any]] = []
    previous_key = None
    for row in rows:
        key = (row.slot, row.hostname if row.slot == 0 else None)
        label = f"{row.service}.{row.slot}" if row.slot else f"{row.service}.{row.hostname or '-'}"
        table.append(
            [
                row.id,
                label if key != previous_key else f" \\_ {label}",
                row.hostname,
                row.desired_state,
                f"{row.state} ({row.health})" if row.health else row.state,
                row.since.isoformat(timespec="seconds"),
                _why(row),
            ]
        )
        previous_key = key
    print_table(["ID", "TASK", "NODE", "DESIRED", "CURRENT", "SINCE", "MESSAGE"], table)


def _why(row: TaskRow) -> str:
    if row.placement_error:
        return f"cannot be placed: {row.placement_error}"
    if row.restart_at is not None and row.state == "new":
        return f"restarts at {row.restart_at.isoformat(timespec='seconds')}"
    return row.error or row.message


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=REPLICAS...")
@follow_options
@pass_ctx
def scale(ctx: Context, pairs: tuple[str, ...], detach: bool, follow: bool) -> None:
    """Set the number of replicas of one or more services."""
    scaled = []
    for pair in pairs:
        name, sep, count = pair.partition("=")
        if not sep or not count.lstrip("-").isdigit():
            raise click.BadParameter(f"{pair!r} is not NAME=REPLICAS", param_hint="NAME=REPLICAS")
        scaled.append(
            ctx.client.request(
                "PATCH", f"{SERVICES}/{name}", ServiceUpdate(replicas=int(count)), type=Service
            )
        )
        click.echo(f"{name} scaled to {count}")
    for one in scaled:
        _follow(ctx, one, detach, follow)


@service.command("update")
@click.argument("name")
@click.option("--replicas", type=int)
@click.option("--force", is_flag=True, help="replace every task even if nothing changed (a rolling restart)")
@spec_options
@policy_options
@follow_options
@click.argument("command", nargs=-1)
@FORMAT_OPTION
@pass_ctx
def update(
    ctx: Context,
    /,
    name: str,
    replicas: int | None,
    force: bool,
    command: tuple[str, ...],
    fmt: str,
    detach: bool,
    follow: bool,
    **options: Any,
) -> None:
    """Change a service. A changed task spec is rolled out as the update policy says; an update of a
    service whose update is paused resumes it."""
    current = ctx.client.get(f"{SERVICES}/{name}", ServiceSummary).service
    spec = build_spec(current.task, command, options)
    policies = {kind: build_policy(getattr(current, kind), kind, options) for kind in ("update", "rollback")}
    request = ServiceUpdate(
        version=current.version,
        replicas=UNSET if replicas is None else replicas,
        task=UNSET if spec == current.task else spec,
        update=UNSET if policies["update"] == current.update else policies["update"],
        rollback=UNSET if policies["rollback"] == current.rollback else policies["rollback"],
        force=force,
    )
    updated = ctx.client.request("PATCH", f"{SERVICES}/{name}", request, type=Service)
    if updated.spec_version != current.spec_version:
        what = f"tasks will be replaced: {_policy(updated.update)}"
    elif updated.update_status != current.update_status and updated.update_status is not None:
        what = updated.update_status.message
    else:
        what = "no task changes"
    done(fmt, updated, f"updated {name} ({what})")
    started = updated.update_status != current.update_status
    _follow(ctx, updated, detach, follow, started=started)


@service.command("rollback")
@click.argument("name")
@follow_options
@FORMAT_OPTION
@pass_ctx
def rollback(ctx: Context, name: str, fmt: str, detach: bool, follow: bool) -> None:
    """Return a service to its spec before the latest change, with the rollback policy."""
    updated = ctx.client.request("POST", f"{SERVICES}/{name}/rollback", type=Service)
    done(fmt, updated, f"rolling back {name} ({_policy(updated.rollback)})")
    _follow(ctx, updated, detach, follow, started=True, rollback=True)


def _policy(policy: UpdatePolicy) -> str:
    batch = "all at once" if policy.parallelism == 0 else f"{policy.parallelism} at a time"
    delay = f", {policy.delay_s:g}s apart" if policy.delay_s else ""
    return f"{batch}{delay}, {policy.order}, on failure {policy.failure_action}"


def update_line(status: UpdateStatus | None) -> str | None:
    """`UPDATE: paused since ...: why` for `service ps`."""
    if status is None:
        return None
    when = (status.completed_at or status.started_at).isoformat(timespec="seconds")
    return f"UPDATE: {status.state} (since {when}): {status.message}"


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def rm(ctx: Context, names: tuple[str, ...]) -> None:
    """Remove services: their tasks are stopped, then they are deleted."""
    for name in names:
        ctx.client.request("DELETE", f"{SERVICES}/{name}")
        click.echo(f"removing {name}")


COMMANDS = [service]
