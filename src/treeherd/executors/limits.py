"""A task's resource limits and its own cgroups: cgroup v1 or v2 per controller, as the host has them
(see `cgroups`), an address-space rlimit for memory without either, and never a silent gap.

Where a task's cgroups go: below this agent's own cgroup, `<own cgroup>/treeherd/<scope>/<task id>`
(`scope` names the executor's directory, so agents sharing a cgroup keep apart and each finds what its
lost tasks left), in each v1 hierarchy of a limit it has, and in the unified hierarchy (when one is
mounted and writable) for every task, limits or not: that cgroup holds the task's whole process tree, whatever sessions or
groups its processes make, so the tree is found by `cgroup.procs` and ended at once by `cgroup.kill`.
An agent that is itself confined (a container, a systemd slice) may only write below its own cgroup,
and its tasks then count against its limits too. The directories made are recorded in the task's
`limits.json`: after a restart the agent may live elsewhere and must still find them.

cgroup v2 limits: `memory.max` (with `memory.swap.max` 0, so the limit is not dodged by swapping and
an excess ends in an OOM kill), `cpu.max` ("quota period"), `pids.max`. The controllers must be
enabled in the `cgroup.subtree_control` of the agent's cgroup and of `treeherd/`; cgroup v2 allows
that only in a cgroup with no processes of its own, so an agent alone in its cgroup (a systemd
service with `Delegate=yes`) first moves itself into a leaf `<own cgroup>/agent`; one sharing its
cgroup with other processes (a login shell's) cannot, and its tasks run without those limits.

How a child joins: between fork and exec (`preexec_fn`) it writes "0" (itself) to the cgroup.procs
files its parent opened for it, so the limits hold from the first instruction of the task's program,
and a failure to join fails the start instead of running the task unconfined. The function only
calls os.write and setrlimit, which take no lock besides the GIL the forking thread holds.

A limit the host cannot enforce: a warning on the task (`TaskLimits.warnings`, shown in its status)
and in the log, or with strict limits a `FatalError` (the task is REJECTED with the reason). Without a
memory controller a memory limit becomes RLIMIT_AS, which bounds address space, not resident memory,
and makes allocations fail instead of an OOM kill; strict limits do not take it as enforcement.

Out of memory: the v2 cgroup's `memory.events` counts `oom_kill`; v1's `memory.oom_control` does
(kernel 4.13+), and before that a SIGKILL with memory.failcnt > 0 is taken for one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from treeherd.executors.base import FatalError
from treeherd.executors.cgroup_host import GROUP, HostCgroups
from treeherd.executors.cgroups import CONTROLLERS, CPU, MEMORY, PIDS
from treeherd.model.objects import LimitSupport

__all__ = ["CPU", "MEMORY", "PIDS", "Limiter", "TaskLimits"]

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's lower bound
NAMES = {MEMORY: "memory", CPU: "CPU", PIDS: "process count"}


class TaskLimits(msgspec.Struct, kw_only=True):
    """The limits one task runs under, and the cgroups made for it (saved as its limits.json)."""

    memory_bytes: int = 0
    cpus: float = 0.0
    pids: int = 0
    memory_cgroup: str | None = None  # v1
    cpu_cgroup: str | None = None  # v1
    pids_cgroup: str | None = None  # v1
    unified_cgroup: str | None = None  # v2: the task's whole tree, and the limits in `unified_limits`
    unified_limits: list[str] = []
    rlimit_as: int = 0  # the fallback for memory_bytes when there is no memory cgroup
    warnings: list[str] = []

    @property
    def cgroups(self) -> list[Path]:
        paths = (self.memory_cgroup, self.cpu_cgroup, self.pids_cgroup, self.unified_cgroup)
        return [Path(path) for path in paths if path is not None]

    @property
    def cpu_enforced(self) -> bool:
        return self.cpus <= 0 or self.cpu_cgroup is not None or CPU in self.unified_limits

    @contextlib.contextmanager
    def joining(self) -> Iterator[Callable[[], None] | None]:
        """A `preexec_fn` that puts the child in the task's cgroups and sets its rlimit (None when
        there is nothing to do, so the child can be started with vfork)."""
        if not self.cgroups and not self.rlimit_as:
            yield None
            return
        descriptors: list[int] = []
        try:
            for cgroup in self.cgroups:
                descriptors.append(os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
            rlimit = self.rlimit_as

            def join() -> None:  # runs in the child between fork and exec: no locks taken
                for descriptor in descriptors:
                    os.write(descriptor, b"0")
                if rlimit:
                    resource.setrlimit(resource.RLIMIT_AS, (rlimit, rlimit))

            yield join
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def pids_in_cgroup(self) -> list[int] | None:
        """The processes in the task's unified cgroup (None: it has none, or it is unreadable)."""
        if self.unified_cgroup is None:
            return None
        try:
            return [int(pid) for pid in (Path(self.unified_cgroup) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return None

    def oom_killed(self, exit_signal: int | None) -> bool:
        """Whether the task's memory cgroup saw an OOM kill."""
        if self.unified_cgroup is not None and MEMORY in self.unified_limits:
            return _counter(Path(self.unified_cgroup) / "memory.events", "oom_kill") > 0
        if self.memory_cgroup is None:
            return False
        cgroup = Path(self.memory_cgroup)
        kills = _counter(cgroup / "memory.oom_control", "oom_kill")
        if kills >= 0:
            return kills > 0
        try:  # kernels before 4.13 do not count kills: a SIGKILL after hitting the limit
            return exit_signal == signal.SIGKILL and int((cgroup / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def kill_all(self) -> None:
        """SIGKILL whatever is still in the task's cgroups, including what left its process group:
        `cgroup.kill` where the kernel has it (the whole tree at once, forks racing it included)."""
        for cgroup in self.cgroups:
            if cgroup == Path(self.unified_cgroup or "-"):
                with contextlib.suppress(OSError):
                    (cgroup / "cgroup.kill").write_text("1")
                    continue
            try:
                pids = (cgroup / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> list[Path]:
        """Remove the task's cgroups; returns those still busy (with processes in them)."""
        busy = []
        for cgroup in self.cgroups:
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno != errno.EBUSY:
                    raise
                busy.append(cgroup)
                continue
            # Leave the agent's own cgroup as we found it: this executor's directory and ours go with
            # their last task (they are busy while other tasks' cgroups are in them).
            for parent in (cgroup.parent, cgroup.parent.parent):
                if GROUP in (parent.name, parent.parent.name):
                    with contextlib.suppress(OSError):
                        parent.rmdir()
        return busy


def _counter(path: Path, key: str) -> int:
    """A "key value" line's value in a cgroup file (-1: no such file or line)."""
    try:
        text = path.read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return -1


class Limiter:
    """Makes `TaskLimits` for tasks, with what the host's cgroups offer (detected on first use).

    `cgroup_root` None: never use cgroups."""

    def __init__(self, cgroup_root: Path | None, scope: str = "") -> None:
        self.cgroup_root = cgroup_root
        self.scope = scope  # this executor's directory below ours, so agents sharing a cgroup stay apart
        self._host: HostCgroups | None = None
        self._warned: set[str] = set()

    @property
    def host(self) -> HostCgroups:
        if self._host is None:
            self._host = HostCgroups.detect(self.cgroup_root)
        return self._host

    @property
    def bases(self) -> dict[str, Path]:
        """Usable v1 controller → the directory the per-task cgroups are made in."""
        return self.host.bases

    @property
    def unified_base(self) -> Path | None:
        return self.host.unified_base

    @property
    def unified_enabled(self) -> list[str]:
        return self.host.unified_enabled

    def support(self) -> LimitSupport:
        return self.host.support()

    def leftovers(self) -> dict[str, TaskLimits]:
        """Task id → the cgroups of this executor's tasks that exist (to find what a lost task left)."""
        found: dict[str, TaskLimits] = {}
        if not self.scope:
            return found
        places = [(f"{c}_cgroup", base) for c, base in self.bases.items()]
        if self.unified_base is not None:
            places.append(("unified_cgroup", self.unified_base))
        for field, base in places:
            with contextlib.suppress(OSError):
                for cgroup in (base / self.scope).iterdir():
                    if cgroup.is_dir():
                        setattr(found.setdefault(cgroup.name, TaskLimits()), field, str(cgroup))
        return found

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s", message)

    # --- per task ----------------------------------------------------------------------------------

    def create(
        self, task_id: str, *, memory_bytes: int, cpus: float, pids: int = 0, strict: bool = False
    ) -> TaskLimits:
        """Make the task's cgroups and set their limits. A limit the host cannot enforce is a warning
        on the task, or with `strict` a `FatalError` (nothing is left made)."""
        limits = TaskLimits(memory_bytes=max(memory_bytes, 0), cpus=max(cpus, 0.0), pids=max(pids, 0))
        wanted: dict[str, dict[str, str]] = {}
        if limits.memory_bytes:
            wanted[MEMORY] = {"memory.limit_in_bytes": str(limits.memory_bytes)}
        if limits.cpus:
            quota = max(MIN_CFS_QUOTA_US, round(limits.cpus * CFS_PERIOD_US))
            wanted[CPU] = {"cpu.cfs_period_us": str(CFS_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        if limits.pids:
            wanted[PIDS] = {"pids.max": str(limits.pids)}
        missing = [c for c in wanted if c not in self.bases and c not in self.unified_enabled]
        if strict and missing:  # refused before anything is made
            reasons = "; ".join(self._unenforced(c) for c in missing)
            raise FatalError(f"strict limits cannot be enforced here: {reasons}")
        unified: dict[str, str] = {}
        for controller, settings in wanted.items():
            if controller in self.bases:
                cgroup = self._make(self.bases[controller], task_id, settings)
                if cgroup is not None:
                    setattr(limits, f"{controller}_cgroup", str(cgroup))
                    continue
            elif controller in self.unified_enabled:
                unified.update(_v2_settings(controller, limits))
                continue
            limits.warnings.append(self._unenforced(controller))
        if self.unified_base is not None:
            cgroup = self._make(self.unified_base, task_id, unified, enable=self.unified_enabled)
            if cgroup is not None:
                limits.unified_cgroup = str(cgroup)
                limits.unified_limits = [c for c in CONTROLLERS if c in wanted and c in self.unified_enabled]
            else:
                limits.warnings.extend(self._unenforced(c) for c in wanted if c in self.unified_enabled)
        if strict and limits.warnings:  # a cgroup that could not be set up
            with contextlib.suppress(OSError):
                limits.remove()
            raise FatalError(f"strict limits cannot be enforced here: {'; '.join(limits.warnings)}")
        if limits.memory_bytes and MEMORY not in limits.unified_limits and limits.memory_cgroup is None:
            limits.rlimit_as = limits.memory_bytes
        return limits

    def _unenforced(self, controller: str) -> str:
        mode = self.host.found.mode
        if controller == MEMORY:
            message = (
                f"memory limit is an address-space rlimit, not enforced as resident memory "
                f"(no usable memory cgroup controller; cgroups {mode})"
            )
        else:
            message = f"{NAMES[controller]} limit not enforced (no usable {controller} cgroup controller; cgroups {mode})"
        self._warn_once(controller, message)
        return message

    def _make(
        self, base: Path, task_id: str, settings: dict[str, str], enable: list[str] | None = None
    ) -> Path | None:
        cgroup = base / self.scope / task_id
        try:
            for level in (base, base / self.scope) if self.scope else (base,):
                made = not level.exists()
                level.mkdir(exist_ok=True)  # again: it goes when its last task's cgroup is removed
                if made and enable:
                    (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in enable))
            cgroup.mkdir(exist_ok=True)
            for name, value in settings.items():  # in order: the cfs period before its quota
                if name == "memory.swap.max" and not (cgroup / name).exists():
                    continue  # swap accounting off: there is no swap to dodge the limit with
                (cgroup / name).write_text(value)
        except OSError as error:
            log.warning("task %s: cannot set up cgroup %s: %s", task_id, cgroup, error)
            with contextlib.suppress(OSError):
                cgroup.rmdir()
            return None
        return cgroup


def _v2_settings(controller: str, limits: TaskLimits) -> dict[str, str]:
    if controller == MEMORY:
        return {"memory.max": str(limits.memory_bytes), "memory.swap.max": "0"}
    if controller == CPU:
        quota = max(MIN_CFS_QUOTA_US, round(limits.cpus * CFS_PERIOD_US))
        return {"cpu.max": f"{quota} {CFS_PERIOD_US}"}
    return {"pids.max": str(limits.pids)}
