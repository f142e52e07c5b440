"""What following a convergence shows (`cli.progress`): a line per slot up to 20 tasks; past that, a
progress bar on a terminal and one plain line of counts per change anywhere else."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from treeherd.cli.progress import MANY, ConvergenceView
from treeherd.model.services import Service, TaskSpec, UpdateStatus
from treeherd.model.tasks_view import TaskRow
from treeherd.testing.factories import FIXED_NOW

ESCAPE = re.compile(r"\x1b\[")


def service(version: int, message: str = "") -> Service:
    status = UpdateStatus(state="updating", started_at=FIXED_NOW, message=message) if message else None
    return Service(
        id="s",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name="web",
        node_id="n",
        replicas=30,
        task=TaskSpec(command=["x"]),
        spec_version=version,
        update_status=status,
    )


def rows(count: int, *, new: int, version: int = 2) -> list[TaskRow]:
    """`count` tasks, the first `new` of them running spec `version`, the rest running the one before."""
    return [
        TaskRow(
            id=f"t{slot}",
            service="web",
            slot=slot,
            hostname="h1",
            desired_state="running",
            state="running",
            since=FIXED_NOW,
            message="",
            error="",
            placement_error="",
            ports={},
            spec_version=version if slot <= new else version - 1,
            cause="",
            restart_at=None,
            outdated=slot > new,
        )
        for slot in range(1, count + 1)
    ]


def test_a_few_tasks_get_a_line_per_slot_that_changed(capsys: pytest.CaptureFixture[str]) -> None:
    with ConvergenceView("web", terminal=True) as view:
        view.show(rows(3, new=1), service(2), 3)
        view.show(rows(3, new=2), service(2), 3)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # three slots, then the one that changed
    assert lines[1].split() == ["web.2", "spec", "1", "->", "2", "running"]
    assert lines[3].split() == ["web.2", "spec", "2", "running"]


def test_past_twenty_tasks_a_terminal_gets_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with ConvergenceView("web", terminal=True, console=console) as view:
        view.show(rows(MANY + 10, new=5), service(2, "update in progress: 5 of 30 slots done"), MANY + 10)
        view.show(rows(MANY + 10, new=30), service(2, "update completed"), MANY + 10)
    drawn = screen.getvalue()
    assert ESCAPE.search(drawn), "a terminal gets a bar drawn in place"
    assert "━" in drawn and "5/30" in drawn and "30/30" in drawn and "web spec 2" in drawn
    assert "update completed" in drawn
    assert "web.1" not in drawn and not capsys.readouterr().out  # no line per slot


def test_past_twenty_tasks_elsewhere_plain_lines_of_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with ConvergenceView("web", terminal=False) as view:
        view.show(rows(MANY + 10, new=5), service(2, "update in progress"), MANY + 10)
        view.show(rows(MANY + 10, new=5), service(2, "update in progress"), MANY + 10)  # no change
        view.show(rows(MANY + 10, new=30), service(2), MANY + 10)
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "5/30 tasks running spec 2 (update in progress)",
        "30/30 tasks running spec 2",
    ]
    assert not ESCAPE.search(out)


def test_once_a_bar_always_a_bar_while_it_scales_down(capsys: pytest.CaptureFixture[str]) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with ConvergenceView("web", terminal=True, console=console) as view:
        view.show(rows(MANY + 10, new=MANY + 10), service(2), 5)  # scaled to 5: 30 still there
        view.show(rows(5, new=5), service(2), 5)
    assert "5/5" in screen.getvalue() and not capsys.readouterr().out
