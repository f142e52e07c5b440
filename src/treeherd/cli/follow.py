"""Following a service until it converges, as `docker service create` does without `--detach`.

`service create|update|scale|rollback` call `follow` after their write: it polls the service and its
current tasks, prints a line for each slot whose task changed (past 20 slots, one line of counts when
they change), and ends when the service has converged: every wanted slot runs a task of the current
spec (with an update under way, once the update is over; with a canary, once it serves). It returns the exit code: 0 converged, 1 when
the update paused or was rolled back (with the reason on stderr). Nothing is followed when stdout is
not a terminal or `--detach` is given, unless `--follow` asks for it (scripts, tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from treeherd.cli.main import Context
from treeherd.model.services import Service
from treeherd.model.tasks_view import ServiceSummary, TaskRow

SERVICES = "/api/v1/services"
POLL_S = 0.5
MANY = 20  # past this many slots, one line of counts instead of a line per slot
_OVER = {"completed", "paused", "rollback_completed", "rollback_paused"}

F = TypeVar("F", bound=Callable[..., Any])


def follow_options(fn: F) -> F:
    """`--detach` and `--follow` for the commands that change what runs."""
    fn = click.option(
        "--follow",
        is_flag=True,
        help="follow the convergence even when stdout is not a terminal",
    )(fn)
    return click.option("--detach", "-d", is_flag=True, help="return at once, without following")(fn)


def wanted(detach: bool, follow: bool) -> bool:
    return follow or (not detach and sys.stdout.isatty())


def follow(ctx: Context, name: str, *, since: datetime | None = None, rollback: bool = False) -> int:
    """Print progress until the service converges; the exit code (see the module docstring). `since`:
    when the update (or rollback) this command started began; the service's update status counts
    only from then on."""
    shown: dict[str, str] = {}
    counts = ""
    while True:
        summary = ctx.client.get(f"{SERVICES}/{name}", ServiceSummary)
        rows = ctx.client.get(f"{SERVICES}/{name}/tasks", list[TaskRow], all=False)
        service = summary.service
        lines = {r.id: _line(r, service.spec_version) for r in rows}
        if len(lines) > MANY:
            on_spec = sum(1 for r in rows if r.spec_version == service.spec_version and r.state == "running")
            now = f"{on_spec}/{summary.desired} tasks running spec {service.spec_version}"
            if now != counts:
                click.echo(now)
                counts = now
        else:
            for task_id, line in sorted(lines.items(), key=lambda item: item[1]):
                if shown.get(task_id) != line:
                    click.echo(line)
            shown = lines
        status = service.update_status
        if status is not None and (since is None or status.started_at < since):
            status = None
        if status is not None and status.state == "canary" and status.canary is not None:
            if status.canary.serving_at is not None:  # a canary is followed until it serves
                click.echo(f"{name}: {status.message}")
                return 0
            time.sleep(POLL_S)
            continue
        if status is not None:
            if status.state in _OVER and status.state != ("rollback_completed" if rollback else "completed"):
                click.echo(f"update {status.state}: {status.message}", err=True)
                return 1
            if status.state not in _OVER:
                time.sleep(POLL_S)
                continue
        # Once the update it started is over, every slot is on the spec: after a rollback (or a canary's
        # abort) the tasks that never left it keep their older, equal, spec version.
        running = [
            r
            for r in rows
            if r.state == "running" and (r.spec_version == service.spec_version or status is not None)
        ]
        if len(running) >= summary.desired and len(rows) == summary.desired:
            message = f"{name}: converged, {summary.desired} tasks running spec {service.spec_version}"
            if status is not None:
                message += f" ({status.message})"
            click.echo(message)
            return 0
        time.sleep(POLL_S)


def _label(row: TaskRow) -> str:
    return f"{row.service}.{row.slot}" if row.slot else f"{row.service}.{row.hostname or '-'}"


def _line(row: TaskRow, version: int) -> str:
    state = f"{row.state} ({row.health})" if row.health else row.state
    spec = f"spec {row.spec_version}" + ("" if row.spec_version == version else f" -> {version}")
    why = row.placement_error or row.error
    return f"{_label(row):<16} {spec:<14} {state}" + (f": {why}" if why else "")


def follow_command(
    ctx: Context,
    service: Service,
    detach: bool,
    follow_anyway: bool,
    *,
    started: bool = False,
    rollback: bool = False,
) -> None:
    """After a command's write: follow the convergence it started, unless detached; exit 1 if the
    update it started paused or was rolled back. `started`: the command started an update."""
    if not wanted(detach, follow_anyway):
        return
    status = service.update_status
    since = status.started_at if started and status is not None else None
    code = follow(ctx, service.name, since=since, rollback=rollback)
    if code:
        raise SystemExit(code)
