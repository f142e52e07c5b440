"""End-to-end fixtures: task processes a test started are gone after it, whatever happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from treeherd.testing.processes import reap_processes_under


@pytest.fixture(autouse=True)
def reap_task_processes(tmp_path: Path) -> Iterator[None]:
    yield
    reap_processes_under(tmp_path)
