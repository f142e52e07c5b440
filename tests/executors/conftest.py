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
        for task_id in executor.task_ids():  # directories, processes and cgroups of tasks
            await executor.purge(task_id)


@pytest.fixture
def executor(make_executor: MakeExecutor) -> ProcessExecutor:
    return make_executor()
