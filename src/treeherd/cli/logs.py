"""`treeherd service logs` and `treeherd task logs`: what tasks print, streamed from their agents."""

from __future__ import annotations

import sys
from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.service import SERVICES, service

TASKS = "/api/v1/tasks"

FOLLOW = click.option("--follow", "-f", is_flag=True, help="keep printing new output")
TAIL = click.option(
    "--tail", type=click.IntRange(min=0), default=None, metavar="N", help="only the last N lines"
)


def _print(ctx: Context, path: str, follow: bool, tail: int | None) -> None:
    query: dict[str, Any] = {"follow": follow}
    if tail is not None:
        query["tail"] = tail
    out = sys.stdout.buffer
    try:
        for chunk in ctx.client.stream_bytes(path, query):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@service.command("logs")
@click.argument("name")
@FOLLOW
@TAIL
@pass_ctx
def service_logs(ctx: Context, name: str, follow: bool, tail: int | None) -> None:
    """Print what the service's current tasks print, each line prefixed with its task."""
    _print(ctx, f"{SERVICES}/{name}/logs", follow, tail)


@click.group()
def task() -> None:
    """Single tasks."""


@task.command("logs")
@click.argument("task_id", metavar="TASK")
@FOLLOW
@TAIL
@pass_ctx
def task_logs(ctx: Context, task_id: str, follow: bool, tail: int | None) -> None:
    """Print what one task prints (ids are in `treeherd service ps`)."""
    _print(ctx, f"{TASKS}/{task_id}/logs", follow, tail)


COMMANDS = [task]
