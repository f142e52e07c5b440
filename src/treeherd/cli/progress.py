"""How the commands that follow a convergence (`cli.follow`) show it: a line for each slot whose task
changed; past `MANY` tasks, a progress bar (rich) on a terminal, where a line per slot would scroll
hundreds of lines away, and one line of counts each time they change anywhere else (a pipe, a log
file: plain lines only, no terminal codes).
"""

from __future__ import annotations

from types import TracebackType

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from treeherd.model.services import Service
from treeherd.model.tasks_view import TaskRow

MANY = 20  # past this many tasks, a bar (or a line of counts) instead of a line per slot


class ConvergenceView:
    """What the user sees while a service converges. `terminal`: stdout is one (the bar is drawn
    there); `console` is for tests."""

    def __init__(self, name: str, *, terminal: bool, console: Console | None = None) -> None:
        self.name = name
        self.terminal = terminal
        self._console = console
        self._shown: dict[str, str] = {}
        self._counts = ""
        self._many = False
        self._bar: Progress | None = None
        self._bar_task: TaskID | None = None

    def show(self, rows: list[TaskRow], service: Service, desired: int) -> None:
        """One poll's state: the service's current tasks, and how many it wants."""
        version = service.spec_version
        self._many = self._many or len(rows) > MANY or desired > MANY
        if not self._many:
            lines = {r.id: _line(r, version) for r in rows}
            for task_id, line in sorted(lines.items(), key=lambda item: item[1]):
                if self._shown.get(task_id) != line:
                    click.echo(line)
            self._shown = lines
            return
        on_spec = sum(1 for r in rows if not r.outdated and r.state == "running")
        status = service.update_status
        message = status.message if status is not None else ""
        if self.terminal:
            self._draw(on_spec, desired, version, message)
            return
        counts = f"{on_spec}/{desired} tasks running spec {version}" + (f" ({message})" if message else "")
        if counts != self._counts:
            click.echo(counts)
            self._counts = counts

    def _draw(self, on_spec: int, desired: int, version: int, message: str) -> None:
        description = f"{self.name} spec {version}"
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("running"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[message]}"),
                console=self._console or Console(),
            )
            self._bar_task = self._bar.add_task(
                description, total=desired, completed=on_spec, message=message
            )
            self._bar.start()
        assert self._bar_task is not None
        self._bar.update(
            self._bar_task,
            completed=on_spec,
            total=desired,
            description=description,
            message=message,
            refresh=True,
        )

    def close(self) -> None:
        """Leave the bar as it last stood (what comes next is printed below it)."""
        if self._bar is not None:
            self._bar.refresh()
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ConvergenceView:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _label(row: TaskRow) -> str:
    return f"{row.service}.{row.slot}" if row.slot else f"{row.service}.{row.hostname or '-'}"


def _line(row: TaskRow, version: int) -> str:
    state = f"{row.state} ({row.health})" if row.health else row.state
    spec = f"spec {row.spec_version}" + (f" -> {version}" if row.outdated else "")
    why = row.placement_error or row.error
    return f"{_label(row):<16} {spec:<14} {state}" + (f": {why}" if why else "")
