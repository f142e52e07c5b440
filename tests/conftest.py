"""Fixtures shared by the whole suite: real manager processes on loopback in temp dirs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from treeherd.testing.processes import ManagerProcess, treeherd_command

CLI_TIMEOUT = 30


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ManagerProcess]:
    """A manager of this test alone, stopped by pid afterwards."""
    process = ManagerProcess(tmp_path / "data")
    with process:
        yield process


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagerProcess]:
    """One manager for a module whose tests each use their own names."""
    process = ManagerProcess(tmp_path_factory.mktemp("shared") / "data")
    with process:
        yield process


class Cli:
    """Runs the real `treeherd` command against one manager."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TREEHERD_MANAGER": self.url}
        result = subprocess.run(
            [*treeherd_command(), *args], capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT
        )
        if check and result.returncode != 0:
            raise AssertionError(f"treeherd {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result


@pytest.fixture
def cli(shared_manager: ManagerProcess) -> Cli:
    return Cli(shared_manager.url)
