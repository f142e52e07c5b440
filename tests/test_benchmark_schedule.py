"""benchmarks/schedule.py with its hollow agents in two processes: every task runs, the figures are
written, and no process of agents is left afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

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
    # The manager's CPU is read in clock ticks of 10 ms: for 40 tasks it may be one tick or none.
    assert schedule["manager_cpu_s"] >= 0
    assert report["manager_cpu_us_per_task"] == round(schedule["manager_cpu_s"] / 40 * 1e6, 1)
    assert "harness CPU" in done.stdout
    # The agents' idle rate is that of the idle phase, and the figure beyond it is derived from both.
    idle = report["phases"]["idle"]
    assert report["agents_idle_cores"] == round(idle["agents_cpu_s"] / idle["seconds"], 3)
    assert "agents_cpu_us_per_task_beyond_idle" in report and "beyond their idle" in done.stdout


def test_the_agents_cpu_beyond_their_idle_rate_takes_that_rate_over_the_schedule_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from schedule_figures import beyond_idle

    phases = {
        "idle": {"seconds": 10.0, "agents_cpu_s": 0.5},
        "schedule": {"seconds": 100.0, "agents_cpu_s": 60.0},
    }
    # 60 s of CPU less 100 s at 0.05 cores, over a million tasks
    assert beyond_idle(phases, 1_000_000) == {
        "agents_idle_cores": 0.05,
        "agents_cpu_us_per_task_beyond_idle": 55.0,
    }
    assert beyond_idle({"schedule": phases["schedule"]}, 1_000_000) == {}
    assert beyond_idle({**phases, "idle": {"seconds": 0.0, "agents_cpu_s": 0.0}}, 1_000_000) == {}


def test_too_many_agent_processes_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, str(SCHEDULE), "--nodes", "2", "--agent-procs", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--agent-procs must be between 1 and --nodes (2), not 3" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_an_interrupted_run_stops_its_agent_processes(tmp_path: Path) -> None:
    command = [
        sys.executable, str(SCHEDULE), "--nodes", "4", "--tasks", "40", "--agent-procs", "2",
        "--out", str(tmp_path), "--no-png", "--quiet-wait", "0", "--settle", "60", "--timeout", "60",
    ]  # fmt: skip
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        agents: list[psutil.Process] = []
        while len(agents) < 2 and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
            agents = [
                p
                for p in psutil.Process(bench.pid).children()
                if "schedule_hollow.py" in " ".join(p.cmdline())
            ]
        assert len(agents) == 2, "the agents' processes did not start"
        time.sleep(1.0)  # into the idle wait before the service
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
    assert bench.returncode == 1, stderr.decode()[-3000:]
    assert b"Traceback" not in stderr
    report = json.loads((tmp_path / "schedule-4x40.json").read_text())
    assert report["error"] == "KeyboardInterrupt()"
    assert report["agent_procs_left"] == 0
    assert sorted(report["agent_pids"]) == sorted(p.pid for p in agents)
    assert not [p.pid for p in agents if _alive(p.pid)]
