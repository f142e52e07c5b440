"""The agent's health checks against real processes: what a command check sees, and its outcomes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.executors.helpers import make_task

from treeherd.agent.health import run_check
from treeherd.executors.base import Exit
from treeherd.executors.process import ProcessExecutor
from treeherd.model.discovery import HealthCheck


def dump_script(report: Path) -> str:
    return f"import json, os; json.dump({{'env': dict(os.environ), 'cwd': os.getcwd()}}, open({str(report)!r}, 'w'))"


async def test_a_command_check_sees_what_its_task_sees(tmp_path: Path) -> None:
    executor = ProcessExecutor(tmp_path / "agent", cgroup_root=None)
    task = make_task(script=dump_script(tmp_path / "task.json"), env={"GREETING": "hi"}, ports={"http": 8080})
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    assert await controller.wait() == Exit(code=0, message="exited with code 0")
    check = HealthCheck(kind="cmd", command=[sys.executable, "-c", dump_script(tmp_path / "check.json")])

    assert await run_check(task, check, executor.command_context(task)) == (True, "exit code 0")

    seen_by_task = json.loads((tmp_path / "task.json").read_text())
    seen_by_check = json.loads((tmp_path / "check.json").read_text())
    assert seen_by_check["cwd"] == seen_by_task["cwd"]
    treeherd = {k: v for k, v in seen_by_task["env"].items() if k.startswith("TREEHERD_") or k == "GREETING"}
    assert treeherd["TREEHERD_PORT_HTTP"] == "8080" and treeherd["GREETING"] == "hi"
    assert {k: seen_by_check["env"].get(k) for k in treeherd} == treeherd
    await executor.purge(task.id)


async def test_a_failing_command_says_what_it_printed(tmp_path: Path) -> None:
    task = make_task()
    check = HealthCheck(kind="cmd", command=[sys.executable, "-c", "print('db down'); raise SystemExit(3)"])
    assert await run_check(task, check) == (False, "db down")


async def test_a_slow_command_times_out(tmp_path: Path) -> None:
    task = make_task()
    check = HealthCheck(
        kind="cmd", command=[sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3
    )
    assert await run_check(task, check) == (False, "no answer within 0.3s")
