"""benchmarks/schedule.py with its hollow agents in two processes: every task runs, the figures are
written, and no process of agents is left afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / "benchmarks" / "schedule.py"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_agents_in_two_processes_run_every_task_and_none_is_left(tmp_path: Path) -> None:
    command = [
        sys.executable, str(SCHEDULE), "--nodes", "4", "--tasks", "40", "--agent-procs", "2",
        "--out", str(tmp_path), "--no-png", "--quiet-wait", "0", "--settle", "0.2", "--timeout", "60",
        "--ready-timeout", "60",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "schedule-4x40.json").read_text())
    assert report["status"] == "ok"
    assert report["tasks_running"] == 40
    assert report["task_states"] == {"running": 40}
    assert report["tasks_started_by_agents"] == 40
    assert report["agent_sessions_established"] == 4
    assert len(report["agent_pids"]) == 2
    assert report["agent_procs_left"] == 0
    assert report["agents_stop"]["exit_codes"] == [0, 0]
    assert not [pid for pid in report["agent_pids"] if _alive(pid)]
    schedule = report["phases"]["schedule"]
    assert schedule["harness_cpu_s"] >= schedule["agents_cpu_s"] >= 0
    assert report["manager_cpu_us_per_task"] > 0
    assert "harness CPU" in done.stdout


def test_too_many_agent_processes_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, str(SCHEDULE), "--nodes", "2", "--agent-procs", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--agent-procs must be between 1 and --nodes (2), not 3" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())
