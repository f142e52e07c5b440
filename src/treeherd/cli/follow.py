"""Following a service until it converges, as `docker service create` does without `--detach`.

`service create|update|scale|rollback` call `follow` after their write: it polls the service and its
current tasks, shows them (`cli.progress`: a line for each slot whose task changed; past 20 tasks a
progress bar on a terminal, a line of counts when they change elsewhere), and ends when the service
has converged: every wanted slot runs a task of the current spec (with an update under way, once the
update is over; with a canary, once it serves). It returns the exit code: 0 converged, 1 when the
update paused or was rolled back (with the reason on stderr). Nothing is followed when stdout is not a
terminal or `--detach` is given, unless `--follow` asks for it (scripts, tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from treeherd.cli.main import Context
from treeherd.cli.progress import ConvergenceView
from treeherd.model.services import Service
from treeherd.model.tasks_view import ServiceSummary, TaskRow

SERVICES = "/api/v1/services"
POLL_S = 0.5
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
    """Show progress until the service converges; the exit code (see the module docstring). `since`:
    when the update (or rollback) this command started began; the service's update status counts
    only from then on."""
    with ConvergenceView(name, terminal=sys.stdout.isatty()) as view:
        return _follow(ctx, name, view, since, rollback)


def _follow(ctx: Context, name: str, view: ConvergenceView, since: datetime | None, rollback: bool) -> int:
    while True:
        summary = ctx.client.get(f"{SERVICES}/{name}", ServiceSummary)
        rows = ctx.client.get(f"{SERVICES}/{name}/tasks", list[TaskRow], all=False)
        service = summary.service
        view.show(rows, service, summary.desired)
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
                view.close()
                click.echo(f"update {status.state}: {status.message}", err=True)
                return 1
            if status.state not in _OVER:
                time.sleep(POLL_S)
                continue
        running = [r for r in rows if r.state == "running" and not r.outdated]
        if len(running) >= summary.desired and len(rows) == summary.desired:
            message = f"{name}: converged, {summary.desired} tasks running spec {service.spec_version}"
            if status is not None:
                message += f" ({status.message})"
            view.close()
            click.echo(message)
            return 0
        time.sleep(POLL_S)


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
