"""benchmarks/agent_path.py: every task of its agents runs and is acknowledged, it says what each run
cost, and it leaves no directory of agent DBs behind."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT_PATH = ROOT / "benchmarks" / "agent_path.py"
LINE = re.compile(
    r"^120 tasks on 6 agents: [\d.]+ µs of CPU per task \(user [\d.]+, system [\d.]+\), [\d.]+ s,"
    r" WAL \d+ bytes per task, RSS max \d+ MiB$"
)


def _left(prefix: str) -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{prefix}*"))


def test_every_task_runs_and_each_run_is_reported() -> None:
    before = _left("treeherd-agent-path-")
    done = subprocess.run(
        [sys.executable, str(AGENT_PATH), "--agents", "6", "--tasks", "120", "--batches", "2", "--runs", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), done.stdout
    assert _left("treeherd-agent-path-") == before


def test_impossible_settings_are_refused_with_what_is_needed() -> None:
    done = subprocess.run(
        [sys.executable, str(AGENT_PATH), "--agents", "10", "--tasks", "5"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "need at least one agent, one task per agent" in done.stderr
    assert "Traceback" not in done.stderr
