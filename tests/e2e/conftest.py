"""End-to-end fixtures: task processes a test started are gone after it, whatever happened, and so are
the cgroups their agents made (an agent killed by the test leaves them for a next agent it never starts)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from treeherd.executors.process import ProcessExecutor
from treeherd.testing.processes import reap_processes_under


@pytest.fixture(autouse=True)
def reap_task_processes(tmp_path: Path) -> Iterator[None]:
    yield
    reap_processes_under(tmp_path)
    roots = [root for root in tmp_path.rglob("process") if root.is_dir()]
    asyncio.run(_purge_tasks(roots))


async def _purge_tasks(roots: list[Path]) -> None:
    """What a next agent would do with the tasks it does not know: purge them (cgroups included)."""
    for root in roots:
        executor = ProcessExecutor(root)
        for task_id in executor.task_ids():
            await executor.purge(task_id)
