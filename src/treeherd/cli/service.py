"""`treeherd service ...`: services on tree nodes, in the habits of `docker service`."""

from __future__ import annotations

from typing import Any

import click
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
from treeherd.cli.params_services import (
    build_canary,
    build_policy,
    build_spec,
    canary_options,
    policy_options,
    spec_options,
)
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, UpdatePolicy, UpdateStatus
from treeherd.model.tasks_view import ServiceSummary, TaskRow

SERVICES = "/api/v1/services"


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
        on_node_down=options["on_node_down"] or "replace",
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
@canary_options
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
    """Change a service. A changed task spec is rolled out as the update policy says (with --canary,
    first on a few tasks beside the old ones); an update of a service whose update is paused resumes it."""
    current = ctx.client.get(f"{SERVICES}/{name}", ServiceSummary).service
    spec = build_spec(current.task, command, options)
    policies = {kind: build_policy(getattr(current, kind), kind, options) for kind in ("update", "rollback")}
    request = ServiceUpdate(
        version=current.version,
        replicas=UNSET if replicas is None else replicas,
        task=UNSET if spec == current.task else spec,
        on_node_down=options["on_node_down"] or UNSET,
        update=UNSET if policies["update"] == current.update else policies["update"],
        rollback=UNSET if policies["rollback"] == current.rollback else policies["rollback"],
        force=force,
        canary=build_canary(options),
    )
    updated = ctx.client.request("PATCH", f"{SERVICES}/{name}", request, type=Service)
    status = updated.update_status
    if status is not None and status.canary is not None and status.state == "canary":
        canary = status.canary
        what = (
            f"canary of {canary.tasks} of {updated.replicas} tasks, about {canary.tasks / updated.replicas:.0%}"
            f" of the requests; judged over {canary.policy.window_s:g}s, then "
            + ("promoted by itself" if canary.policy.auto_promote else f"treeherd service promote {name}")
        )
    elif updated.spec_version != current.spec_version:
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


@service.command("promote")
@click.argument("name")
@follow_options
@FORMAT_OPTION
@pass_ctx
def promote(ctx: Context, name: str, fmt: str, detach: bool, follow: bool) -> None:
    """Promote a service's canary: its other tasks get the new spec, with the update policy."""
    updated = ctx.client.request("POST", f"{SERVICES}/{name}/promote", type=Service)
    done(fmt, updated, f"promoting the canary of {name} ({_policy(updated.update)})")
    _follow(ctx, updated, detach, follow, started=True)


@service.command("abort")
@click.argument("name")
@follow_options
@FORMAT_OPTION
@pass_ctx
def abort(ctx: Context, name: str, fmt: str, detach: bool, follow: bool) -> None:
    """Abort a service's canary: its tasks get the previous spec back, with the rollback policy."""
    updated = ctx.client.request("POST", f"{SERVICES}/{name}/abort", type=Service)
    done(fmt, updated, f"aborting the canary of {name} ({_policy(updated.rollback)})")
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
    line = f"UPDATE: {status.state} (since {when}): {status.message}"
    canary = status.canary
    if canary is not None:
        slots = ", ".join(canary.slots) or "not chosen yet"
        line += f"\nCANARY: {canary.tasks} task(s) in slots {slots}" + (
            f"; {canary.verdict}" if canary.verdict else ""
        )
    return line


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_ctx
def rm(ctx: Context, names: tuple[str, ...]) -> None:
    """Remove services: their tasks are stopped, then they are deleted."""
    for name in names:
        ctx.client.request("DELETE", f"{SERVICES}/{name}")
        click.echo(f"removing {name}")


COMMANDS = [service]
