"""Helpers of the executor tests: tasks that run Python snippets, bounded polling, process lookups."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import psutil

from treeherd.executors.base import Exit
from treeherd.executors.process import ProcessController, ProcessExecutor
from treeherd.model.services import Resources, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing import waiting

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PYTHON = sys.executable


def make_task(
    task_id: str = "t1",
    *,
    script: str = "pass",
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    memory: int = 0,
    cpus: float = 0.0,
    ports: dict[str, int] | None = None,
) -> Task:
    """A task running `python -c script` (or `command`)."""
    return Task(
        id=task_id,
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-1",
        service_name="web",
        node_path="/shop/frontend",
        slot=2,
        machine_id="m-1",
        status=TaskStatus(state=TaskState.ASSIGNED, timestamp=NOW),
        spec=TaskSpec(
            command=command if command is not None else [PYTHON, "-c", script],
            env=env or {},
            workdir=workdir,
            resources=Resources(limit_memory=memory, limit_cpus=cpus),
        ),
        ports=ports or {},
    )


async def started(executor: ProcessExecutor, task: Task) -> ProcessController:
    controller = executor.controller(task)
    await controller.prepare()
    await controller.start()
    return controller


async def run(executor: ProcessExecutor, task: Task, timeout_s: float = 15.0) -> Exit:
    """Prepare, start and wait for a task, bounded."""
    controller = await started(executor, task)
    async with asyncio.timeout(timeout_s):
        return await controller.wait()


# The conditions are another process's: poll less often and wait longer.
eventually = functools.partial(waiting.eventually, timeout_s=10.0, poll_s=0.02)


async def collect(chunks: AsyncIterator[bytes], timeout_s: float = 15.0) -> bytes:
    out = b""
    async with asyncio.timeout(timeout_s):
        async for chunk in chunks:
            out += chunk
    return out


def output(executor: ProcessExecutor, task_id: str = "t1") -> bytes:
    """What the task wrote to its current log file."""
    try:
        return (executor.root / "tasks" / task_id / "output.log").read_bytes()
    except FileNotFoundError:
        return b""


async def until_ready(executor: ProcessExecutor, task_id: str = "t1") -> None:
    """Until the task printed "ready" (it set up its signal handlers)."""
    await eventually(lambda: b"ready" in output(executor, task_id), f"task {task_id} ready")


def running_with(marker: str) -> list[psutil.Process]:
    """Processes (not zombies) whose command line has `marker`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def gone(pid: int) -> bool:
    """The process ended (a zombie waiting for its parent has ended too)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def task_dir(executor: ProcessExecutor, task_id: str = "t1") -> Path:
    return executor.root / "tasks" / task_id
