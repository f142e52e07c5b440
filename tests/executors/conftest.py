"""Fixtures of the executor tests: process executors in temp dirs, whose tasks are all purged after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from treeherd.executors.process import ProcessExecutor

MakeExecutor = Callable[..., ProcessExecutor]


@pytest.fixture
async def make_executor(tmp_path: Path) -> AsyncIterator[MakeExecutor]:
    """Makes executors (on `tmp_path/agent` unless given a root); kills and removes every task after."""
    made: list[ProcessExecutor] = []

    def make(root: Path | None = None, **kwargs: Any) -> ProcessExecutor:
        executor = ProcessExecutor(root or tmp_path / "agent", **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        tasks = executor.root / "tasks"
        for task_dir in sorted(tasks.iterdir()) if tasks.is_dir() else []:
            await executor.purge(task_dir.name)


@pytest.fixture
def executor(make_executor: MakeExecutor) -> ProcessExecutor:
    return make_executor()
