"""The process executor: each task is a local process session that outlives the agent, which adopts it
again after a restart.

Responsibility: start, watch, stop and clean up one OS process (and what it spawns) per task. How it
is started and found again is `spawn`, its files `taskfiles`, its output `logfiles`, its resource
limits and cgroups `limits`, how its process group is watched and stopped `process_groups`.

Start: `command[0]` with the rest as arguments, as a new session (`start_new_session`), so the task
and what it spawns share one process group that `shutdown` signals as a whole, and where the host
allows it in a cgroup of its own that holds its whole tree. Environment: `core.tasks.task_env` (PATH,
HOME and LANG from the agent, the spec's `env`, TREEHERD_* variables) plus the executor's marker (see
`spawn`). Working directory: `spec.workdir` (absolute), or the task's own `work/` directory.
`command_context` gives a command run beside the task (a health check) the same environment (the
marker included: one left running by a dead agent is the task's, and ends with it) and working
directory.

Adoption: the task's process is not tied to the agent (its output is a file, its session its own), so
it keeps running when the agent stops. A controller whose `start` or `wait` finds a `process.json`
whose pid is alive with the recorded start time adopts that process instead of starting another one;
if the process is gone, the task ran and ended while the agent was away: nothing is started again.
A `spawn.json` without `process.json` (the agent died in between) makes `start` look for the process
by its marker and adopt it; only when none is found is it started (again). Only the parent learns an
exit status, so for a process that ended or is watched by an agent that is not its parent, `wait`
reports `Exit(code=None, message="exited while the agent was away (exit status unknown)")`, which
fails the task; an OOM kill is still seen by its cgroup's counter. (Children started by this same
Python process, e.g. by an agent restarted in-process, keep their real status.) The exit status once
collected is saved, so an agent that restarts before reporting it still knows it.

`task_ids`, `stop_orphan` and `purge` let an agent find, stop and remove what is left of tasks it no
longer holds, including processes whose task directory is gone (found by the marker). Exit statuses:
code 0 → `Exit(code=0)`; code n → `Exit(code=n)`; a signal → `Exit(signal=n)`, "killed by SIGKILL";
an OOM kill by the task's memory cgroup → `out_of_memory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

from treeherd.core.tasks.task_env import task_environment
from treeherd.executors import logfiles
from treeherd.executors.base import CommandContext, Exit, FatalError
from treeherd.executors.limits import Limiter, TaskLimits
from treeherd.executors.process_groups import (
    KILL_WAIT_S,
    ProcessRecord,
    child,
    forget_child,
    group_gone,
    is_running,
    open_pidfd,
    readable,
    signal_group,
    stop_group,
)
from treeherd.executors.spawn import (
    ENV_EXECUTOR_DIR,
    check_program,
    check_spec,
    check_workdir,
    kill_processes,
    marked_processes,
    recover,
    spawn,
)
from treeherd.executors.taskfiles import EXIT, LIMITS, PROCESS, SPAWN, TaskFiles, remove_tree
from treeherd.model.objects import LimitSupport
from treeherd.model.services import Task

__all__ = ["PROCESS", "UNKNOWN_EXIT", "ProcessController", "ProcessExecutor", "ProcessRecord", "TaskFiles"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# How often `wait` looks at a process it gets no notice from, and rotates the task's output.
POLL_S = 0.2
CGROUP_POLL_S = 0.05
UNKNOWN_EXIT = "exited while the agent was away (exit status unknown)"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_of(returncode: int | None, limits: TaskLimits) -> Exit:
    """The Exit for a Popen-style return code (negative: the signal; None: unknown)."""
    signum = -returncode if returncode is not None and returncode < 0 else None
    code = returncode if returncode is not None and returncode >= 0 else None
    if returncode != 0 and limits.oom_killed(signum):
        message = f"out of memory (limit {limits.memory_bytes} bytes)"
        return Exit(code=code, signal=signum, out_of_memory=True, message=message)
    if returncode is None:
        return Exit(message=UNKNOWN_EXIT)
    if signum is not None:
        return Exit(signal=signum, message=f"killed by {_signal_name(signum)}")
    return Exit(code=code, message=f"exited with code {code}")


class ProcessController:
    """One task's process: the executor protocol's steps, each idempotent, plus its logs."""

    def __init__(self, executor: ProcessExecutor, task: Task) -> None:
        self.task = task
        self.files = TaskFiles(executor.root, task.id)
        self._executor = executor
        self._record: ProcessRecord | None = None
        self._exit: Exit | None = None
        self._limits: TaskLimits | None = None

    @property
    def record(self) -> ProcessRecord | None:
        """The process started or adopted (None before `start`)."""
        return self._record

    @property
    def warnings(self) -> list[str]:
        """What the task runs without that its spec asks for (limits the host cannot enforce)."""
        limits = self._limits or self.files.read(LIMITS, TaskLimits)
        return list(limits.warnings) if limits is not None else []

    # --- steps --------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        spec = self.task.spec
        check_spec(spec)
        self.files.dir.mkdir(parents=True, exist_ok=True)
        workdir = self._workdir()
        check_workdir(workdir)
        check_program(spec.command[0], workdir, self._environment()["PATH"])
        self._ensure_limits()

    async def start(self) -> None:
        if self._record is not None or self._exit is not None:
            return
        if self.files.read(EXIT, Exit) is not None:
            return  # it ran and ended already: `wait` reports how
        record = self.files.process() or self._find_lost()
        if record is not None:
            self._record = record
            if is_running(record):
                log.info("task %s: adopted its running process %d", self.task.id, record.pid)
            else:
                log.info("task %s: its process %d ended while the agent was away", self.task.id, record.pid)
            return
        command = self.task.spec.command
        if not command:
            raise FatalError("the task has no command")
        self.files.dir.mkdir(parents=True, exist_ok=True)
        self._record = spawn(
            self.files,
            self._executor.root,
            command,
            workdir=self._workdir(),
            env=self._environment(),
            limits=self._ensure_limits(),
        )

    async def wait(self) -> Exit:
        if self._exit is not None:
            return self._exit
        if (saved := self.files.read(EXIT, Exit)) is not None:
            self._exit = saved
            return saved
        record = self._record = self._record or self.files.process()
        if record is None:
            return Exit(message="the task's process was never started")
        returncode = await self._watch(record, child(record))
        # Another controller of the task (in this process) may have saved the status meanwhile.
        if (saved := self.files.read(EXIT, Exit)) is None:
            saved = exit_of(returncode, self._saved_limits())
            self.files.write(EXIT, saved)
        forget_child(record)
        self._exit = saved
        return saved

    async def shutdown(self, grace_s: float) -> None:
        record = self._record = self._record or self.files.process()
        if record is not None:
            await stop_group(record, grace_s)

    async def remove(self) -> None:
        await self._executor.purge(self.task.id)

    def logs(self, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        return self._executor.logs(self.task.id, follow=follow, tail=tail)

    # --- helpers ------------------------------------------------------------------------------------

    def _find_lost(self) -> ProcessRecord | None:
        """After a crash between starting the process and recording it: the process, found by its
        marker and recorded now (None: it never started, or it has ended)."""
        if not self.files.exists(SPAWN):
            return None
        found = self._executor.marked(self.task.id, self._saved_limits()).get(self.task.id, [])
        return recover(self.files, found)

    def _workdir(self) -> Path:
        workdir = self.task.spec.workdir
        if workdir is None:
            self.files.work.mkdir(parents=True, exist_ok=True)
            return self.files.work
        if not os.path.isabs(workdir):
            raise FatalError(f"working directory {workdir!r} is not an absolute path")
        return Path(workdir)

    def _environment(self) -> dict[str, str]:
        return task_environment(self.task, os.environ, os.defpath)

    def _ensure_limits(self) -> TaskLimits:
        """The task's limits, made (cgroups included) on first use and saved for later controllers."""
        if self._limits is None:
            limits = self.files.read(LIMITS, TaskLimits)
            if limits is None:
                resources = self.task.spec.resources
                limits = self._executor.limiter.create(
                    self.task.id,
                    memory_bytes=resources.limit_memory,
                    cpus=resources.limit_cpus,
                    pids=resources.limit_pids,
                    strict=resources.limits == "strict",
                )
                self.files.write(LIMITS, limits)
                for warning in limits.warnings:
                    log.warning("task %s: %s", self.task.id, warning)
            self._limits = limits
        return self._limits

    def _saved_limits(self) -> TaskLimits:
        return self._limits or self.files.read(LIMITS, TaskLimits) or TaskLimits()

    async def _watch(self, record: ProcessRecord, popen: subprocess.Popen[bytes] | None) -> int | None:
        """Until the process ends, rotating its output meanwhile: its return code (None: unknown)."""
        executor = self._executor
        descriptor = open_pidfd(record)
        try:
            while True:
                if popen is not None:
                    if (returncode := popen.poll()) is not None:
                        return returncode
                elif not is_running(record):
                    return None
                logfiles.rotate(self.files.dir, executor.log_max_bytes, executor.log_backups)
                await readable(descriptor, POLL_S)
        finally:
            if descriptor is not None:
                os.close(descriptor)


class ProcessExecutor:
    """Runs tasks as local processes under `root`; see the module's description."""

    name = "process"

    def __init__(
        self,
        root: Path,
        *,
        cgroup_root: Path | None = Path("/sys/fs/cgroup"),
        log_max_bytes: int = 10 * MIB,
        log_backups: int = 3,
    ) -> None:
        self.root = root
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.limiter = Limiter(cgroup_root, scope=hashlib.sha256(str(root).encode()).hexdigest()[:12])

    def controller(self, task: Task) -> ProcessController:
        return ProcessController(self, task)

    def limit_support(self) -> LimitSupport:
        """Which limits this host enforces (cgroups detected on first use)."""
        return self.limiter.support()

    def command_context(self, task: Task) -> CommandContext:
        """The task's environment and working directory, for a command run beside it."""
        controller = ProcessController(self, task)
        try:
            cwd: str | None = str(controller._workdir())
        except FatalError:
            cwd = None  # the task itself was refused for it; the check runs where the agent runs
        return CommandContext(env={**controller._environment(), ENV_EXECUTOR_DIR: str(self.root)}, cwd=cwd)

    def marked(
        self, task_id: str | None = None, limits: TaskLimits | None = None
    ) -> dict[str, list[psutil.Process]]:
        """Task id → live processes carrying this executor's marker (of `task_id` only when given),
        looked for in the task's unified cgroup when it has one, else in the whole process table."""
        candidates = limits.pids_in_cgroup() if limits is not None else None
        return marked_processes(self.root, task_id, candidates)

    def task_ids(self) -> list[str]:
        """Every task this executor has files of (running or not), or processes of."""
        try:
            ids = {path.name for path in (self.root / "tasks").iterdir() if path.is_dir()}
        except FileNotFoundError:
            ids = set()
        ids.update(task_id for task_id in self.marked() if task_id)
        ids.update(self.limiter.leftovers())
        return sorted(ids)

    def running_tasks(self) -> dict[str, int]:
        """Task id → pid of every task whose recorded process still runs."""
        running = {}
        for task_id in self.task_ids():
            with contextlib.suppress(FatalError):  # a directory that is no task's
                record = TaskFiles(self.root, task_id).process()
                if record is not None and is_running(record):
                    running[task_id] = record.pid
        return running

    async def stop_orphan(self, task_id: str, grace_s: float) -> None:
        """Stop a task's processes (SIGTERM, SIGKILL after `grace_s`) without its Task at hand: its
        recorded process group, or, with no record, what carries its marker."""
        files = TaskFiles(self.root, task_id)
        record = files.process()
        if record is not None:
            await stop_group(record, grace_s)
        elif files.exists(SPAWN) or not files.dir.exists():
            limits = files.read(LIMITS, TaskLimits) or self.limiter.leftovers().get(task_id)
            await self._stop_marked(task_id, grace_s, limits)

    async def purge(self, task_id: str) -> None:
        """Kill whatever of the task still runs (its process group, its cgroups, and processes with
        its marker when it may have some unrecorded), remove its cgroups and delete its directory."""
        files = TaskFiles(self.root, task_id)
        record = files.process()
        if record is not None:
            signal_group(record, signal.SIGKILL)
            if not await group_gone(record, KILL_WAIT_S):
                log.warning("task %s: process group %d survived SIGKILL", task_id, record.pid)
            popen = child(record)
            if popen is not None and popen.poll() is not None:
                forget_child(record)
        limits = files.read(LIMITS, TaskLimits) or self.limiter.leftovers().get(task_id)
        if limits is not None:
            await self._remove_cgroups(task_id, limits)
        if record is None and files.exists(SPAWN):  # started, maybe, but not recorded
            await self._stop_marked(task_id, 0, limits)
        await asyncio.to_thread(remove_tree, files.dir)

    async def _stop_marked(self, task_id: str, grace_s: float, limits: TaskLimits | None) -> None:
        """End the task's marked processes (in its cgroup, if it has one, else in the process table)."""
        processes = (await asyncio.to_thread(self.marked, task_id, limits)).get(task_id, [])
        if not processes:
            return
        log.warning("task %s: stopping %d unrecorded processes of it", task_id, len(processes))
        for signum in (signal.SIGTERM, signal.SIGKILL) if grace_s > 0 else (signal.SIGKILL,):
            kill_processes(processes, signum)
            _, processes = await asyncio.to_thread(psutil.wait_procs, processes, grace_s or KILL_WAIT_S)
            if not processes:
                return

    async def _remove_cgroups(self, task_id: str, limits: TaskLimits) -> None:
        # Processes that left the process group are still in the cgroups: kill them too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT_S
        while True:
            limits.kill_all()
            busy = limits.remove()
            if not busy:
                return
            if loop.time() >= deadline:
                log.warning("task %s: cgroups still busy, left behind: %s", task_id, busy)
                return
            await asyncio.sleep(CGROUP_POLL_S)

    def logs(self, task_id: str, *, follow: bool = False, tail: int | None = None) -> AsyncIterator[bytes]:
        """A task's output: the last `tail` lines (None: all kept), then with `follow` what it writes
        until its process ends. Works for any task with a directory here, controller or not."""
        try:
            files = TaskFiles(self.root, task_id)
        except FatalError:
            raise LookupError(f"no task {task_id!r} here") from None
        if not files.dir.is_dir():
            raise LookupError(f"no task {task_id!r} here")

        def running() -> bool:
            record = files.process()
            return record is not None and is_running(record)

        return logfiles.follow_logs(
            files.dir, follow=follow, tail=tail, backups=self.log_backups, running=running
        )
