"""No process escapes its task: an agent that dies between starting a task's process and recording
it leaves `spawn.json`, and the next agent finds the process by the marker in its environment and
adopts it (never starts a second one), or ends it when its task is gone; agents sharing a machine
never take each other's processes."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import MakeExecutor
from tests.executors.helpers import PYTHON, eventually, gone, make_task, running_with, task_dir
from treeherd.executors import process_groups
from treeherd.executors.process import PROCESS, ProcessExecutor, TaskFiles
from treeherd.executors.taskfiles import SPAWN, remove_tree
from treeherd.model.services import Task

pytestmark = pytest.mark.timeout(60)

SLEEPER = "import sys, time; print('ready', flush=True); time.sleep(60)"


_forgotten: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def reap_forgotten() -> Iterator[None]:
    """The Popens the 'new agent' must not know of are kept here, and reaped after the test."""
    yield
    while _forgotten:
        popen = _forgotten.pop()
        popen.kill()
        popen.wait(10)


class AgentDied(Exception):
    """Stands for the agent being killed right after it started a task's process."""


def marker() -> str:
    return f"treeherd-test-{uuid.uuid4().hex}"


async def start_and_die(
    executor: ProcessExecutor, task: Task, tag: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Start the task's process, then 'die' before recording it; its pid. The new agent that follows
    knows nothing of it (no Popen)."""
    controller = executor.controller(task)
    await controller.prepare()
    write = TaskFiles.write

    def dies_before_recording(self: TaskFiles, name: str, value: Any) -> None:
        if name == PROCESS:
            raise AgentDied
        write(self, name, value)

    with monkeypatch.context() as patch:
        patch.setattr(TaskFiles, "write", dies_before_recording)
        with pytest.raises(AgentDied):
            await controller.start()
    await eventually(lambda: running_with(tag), "the started process")
    (process,) = running_with(tag)
    for key in [key for key in process_groups._children if key[0] == process.pid]:
        _forgotten.append(process_groups._children.pop(key))
    assert (task_dir(executor) / SPAWN).exists() and not (task_dir(executor) / PROCESS).exists()
    return int(process.pid)


async def test_a_process_started_but_not_recorded_is_adopted_not_started_again(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = marker()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    pid = await start_and_die(make_executor(), task, tag, monkeypatch)

    second = make_executor()  # the next agent, on the same directory
    controller = second.controller(task)
    await controller.prepare()
    await controller.start()
    assert controller.record is not None and controller.record.pid == pid
    assert [p.pid for p in running_with(tag)] == [pid]  # one process for the task, not two
    assert TaskFiles(second.root, "t1").process() == controller.record  # recorded now
    assert second.running_tasks() == {"t1": pid}
    async with asyncio.timeout(20):
        await controller.remove()
    assert gone(pid) and running_with(tag) == []


async def test_a_lost_process_whose_task_directory_is_gone_is_found_and_ended(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tag = marker()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    first = make_executor()
    pid = await start_and_die(first, task, tag, monkeypatch)
    remove_tree(task_dir(first))  # what a removal before this fix left: the process, no files

    neighbour = make_executor(tmp_path / "other-agent")  # another agent on the same machine
    assert neighbour.task_ids() == []
    await neighbour.purge("t1")
    assert [p.pid for p in running_with(tag)] == [pid]  # not its to end

    second = make_executor()
    assert second.task_ids() == ["t1"]  # found by its marker, as the agent's clean-up at start does
    async with asyncio.timeout(20):
        await second.stop_orphan("t1", 0.3)
        await second.purge("t1")
    await eventually(lambda: gone(pid), "the lost process ended")
    assert second.task_ids() == []


async def test_another_agents_lost_process_is_not_adopted(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tag = marker()
    task = make_task(command=[PYTHON, "-c", SLEEPER, tag])
    pid = await start_and_die(make_executor(), task, tag, monkeypatch)
    neighbour = make_executor(tmp_path / "other-agent")
    files = TaskFiles(neighbour.root, "t1")
    files.dir.mkdir(parents=True)
    (files.dir / SPAWN).write_text('{"started_at": 0}')  # its own crash, for the same task id
    controller = neighbour.controller(task)
    await controller.prepare()
    await controller.start()
    assert controller.record is not None and controller.record.pid != pid
    pids: Callable[[], list[int]] = lambda: sorted(p.pid for p in running_with(tag))  # noqa: E731
    assert pids() == sorted([pid, controller.record.pid])
