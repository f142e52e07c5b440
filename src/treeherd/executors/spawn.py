"""Starting a task's process so that no process ever escapes its task, and finding it again.

Checks before starting (the program and working directory, so a task that can never run is refused
in `prepare`), then the start itself: `spawn.json` is written first, the process gets this executor's
marker in its environment (`TREEHERD_EXECUTOR_DIR=<root>` beside `TREEHERD_TASK_ID`), joins the task's
cgroups before its first instruction, and `process.json` is written right after. An agent killed
between the start and `process.json` leaves `spawn.json` behind; the next agent then looks for the
task's processes by that marker (in the task's own cgroup when it has one, else in the whole process
table) and adopts the one it finds instead of starting another. Every process a task spawns inherits
the marker, so what a crash left of tasks whose directories are gone is found by it too. The marker
names the executor's directory, so agents sharing a machine never take each other's processes.
(A process that clears its own environment hides from the scan, not from the task's cgroup.)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from treeherd.executors import logfiles
from treeherd.executors.base import FatalError
from treeherd.executors.limits import TaskLimits
from treeherd.executors.process_groups import ProcessRecord, register_child
from treeherd.executors.taskfiles import PROCESS, SPAWN, SpawnIntent, TaskFiles
from treeherd.model.services import TaskSpec

__all__ = [
    "ENV_EXECUTOR_DIR",
    "check_program",
    "check_spec",
    "check_workdir",
    "find_leader",
    "kill_processes",
    "marked_processes",
    "recover",
    "spawn",
]

log = logging.getLogger(__name__)

ENV_EXECUTOR_DIR = "TREEHERD_EXECUTOR_DIR"
ENV_TASK_ID = "TREEHERD_TASK_ID"
# Errors of exec or chdir in the child that no retry can fix.
_CANNOT_START = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOEXEC,
    errno.ELOOP,
    errno.ENAMETOOLONG,
}


def check_spec(spec: TaskSpec) -> None:
    """What a process cannot run: no command, or a container image or user (the docker executor's)."""
    if not spec.command:
        raise FatalError("the task has no command")
    if spec.image is not None or spec.user is not None:
        what = "an image" if spec.image is not None else "a user"
        raise FatalError(
            f"the task asks for {what}, which the process executor cannot give:"
            " run it on an agent with --executor docker (e.g. with a --constraint on a label)"
        )


def check_workdir(workdir: Path) -> None:
    if not workdir.exists():
        raise FatalError(f"working directory {workdir} does not exist")
    if not workdir.is_dir():
        raise FatalError(f"working directory {workdir} is not a directory")
    if not os.access(workdir, os.R_OK | os.X_OK):
        raise FatalError(f"working directory {workdir} is not readable")


def check_program(program: str, workdir: Path, search_path: str) -> None:
    """What exec will run: a path (relative to the working directory) or a name on the task's PATH."""
    if not program:
        raise FatalError("the task's command is an empty string")
    if "/" not in program:
        if shutil.which(program, path=search_path) is None:
            raise FatalError(f"{program!r} not found on PATH {search_path}")
        return
    path = workdir / program  # an absolute program path replaces the working directory
    if not path.exists():
        raise FatalError(f"{program!r}: no such file")
    if path.is_dir():
        raise FatalError(f"{program!r} is a directory")
    if not os.access(path, os.X_OK):
        raise FatalError(f"{program!r} is not executable")


def spawn(
    files: TaskFiles,
    root: Path,
    command: list[str],
    *,
    workdir: Path,
    env: dict[str, str],
    limits: TaskLimits,
) -> ProcessRecord:
    """Start the task's process (see the module's description) and record it."""
    files.write(SPAWN, SpawnIntent(started_at=time.time()))
    output = logfiles.open_for_child(files.dir)
    try:
        with limits.joining() as join:
            # Synchronous fork and exec (about a millisecond): no await between starting the
            # process and recording it, so a cancelled start cannot lose track of it.
            popen = subprocess.Popen(
                command,
                cwd=workdir,
                env={**env, ENV_EXECUTOR_DIR: str(root)},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
                preexec_fn=join,  # only os.write and setrlimit: see limits
            )
    except OSError as error:
        if error.errno in _CANNOT_START:
            where = f": {error.filename}" if error.filename else ""
            raise FatalError(f"cannot start {command[0]!r}: {error.strerror}{where}") from None
        raise
    finally:
        os.close(output)
    record = ProcessRecord(
        pid=popen.pid, create_time=psutil.Process(popen.pid).create_time(), started_at=time.time()
    )
    register_child(record, popen)
    files.write(PROCESS, record)
    log.info("task %s: started process %d: %s", files.task_id, record.pid, command)
    return record


def _all_pids() -> list[int]:
    return [int(pid) for pid in psutil.pids()]


def marked_processes(
    root: Path, task_id: str | None = None, candidates: Iterable[int] | None = None
) -> dict[str, list[psutil.Process]]:
    """Task id → live processes (not zombies) carrying this executor's marker, of `task_id` only
    when given; looked for among `candidates` (pids, e.g. a cgroup's) or else every process."""
    found: dict[str, list[psutil.Process]] = {}
    mine = str(root)
    for pid in _all_pids() if candidates is None else candidates:
        if pid == os.getpid():
            continue
        try:
            process = psutil.Process(pid)
            env = process.environ()
            if env.get(ENV_EXECUTOR_DIR) != mine or process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        owner = env.get(ENV_TASK_ID, "")
        if task_id is None or owner == task_id:
            found.setdefault(owner, []).append(process)
    return found


def find_leader(processes: list[psutil.Process]) -> ProcessRecord | None:
    """The task's process among its marked processes: the oldest leader of its own session (what
    `spawn` starts; what the task spawns stays in that session unless it leaves it)."""
    leaders = [process for process in processes if _leads(process)]
    if not leaders:
        return None
    oldest = min(leaders, key=lambda process: process.create_time())
    return ProcessRecord(pid=oldest.pid, create_time=oldest.create_time(), started_at=oldest.create_time())


def recover(files: TaskFiles, found: list[psutil.Process]) -> ProcessRecord | None:
    """After a crash between starting the task's process and recording it: the process among the
    task's marked processes `found`, recorded now (None: it never started, or it has ended; what a
    dead leader left is ended, being nobody's)."""
    record = find_leader(found)
    if record is None:
        if found:
            log.warning("task %s: ending %d processes its lost process left", files.task_id, len(found))
            kill_processes(found)
        return None
    log.warning("task %s: found process %d started before the agent died", files.task_id, record.pid)
    # Another session leader: the task was started twice by an agent without this recovery.
    kill_processes([process for process in found if process.pid != record.pid and _leads(process)])
    files.write(PROCESS, record)
    return record


def _leads(process: psutil.Process) -> bool:
    try:
        return bool(os.getsid(process.pid) == process.pid)
    except OSError:
        return False


def kill_processes(processes: list[psutil.Process], signum: int = signal.SIGKILL) -> None:
    """Send `signum` to each process (and the process group it leads)."""
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signum)
        with contextlib.suppress(psutil.Error, OSError):
            process.send_signal(signum)
