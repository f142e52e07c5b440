"""A task's resource limits: a cgroup v1 memory and cpu cgroup per task, or RLIMIT_AS without cgroups.

Where the cgroups go: below this agent's own cgroup in each hierarchy (from /proc/self/cgroup), as
`<mount>/<own cgroup>/treeherd/<task id>`. An agent that is itself confined (a container, a systemd
slice, a sandbox) may only write below its own cgroup, and its tasks then count against the agent's
limits as well, as they should. The directories made for a task are recorded in its `limits.json`,
because after a restart the agent may live in another cgroup and must still find them.

How a child joins: between fork and exec (`preexec_fn`) it writes "0" (itself) to the cgroup.procs
files its parent opened for it, so the limits hold from the first instruction of the task's program,
and a failure to join fails the start instead of running the task unconfined. The function only
calls os.write and setrlimit, which take no lock besides the GIL the forking thread holds: that is
what keeps `preexec_fn` safe enough in an agent that has threads.

Without a usable cgroup v1 memory hierarchy (none mounted, cgroup v2 only, not writable), a memory
limit becomes RLIMIT_AS: it bounds address space, not resident memory (a program reserving much
virtual memory fails early), and exceeding it makes allocations fail (MemoryError, ENOMEM) instead
of getting the task killed, so it cannot be reported as out of memory: the exit is whatever the
program does then. Without a usable cpu hierarchy a CPU limit is not enforced (warned once).

Out of memory: the task's memory cgroup counts OOM kills (`oom_kill` in memory.oom_control, kernel
4.13+); on older kernels a SIGKILL with memory.failcnt > 0 is taken for one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import msgspec

__all__ = ["CPU", "MEMORY", "Limiter", "TaskLimits", "find_hierarchies"]

log = logging.getLogger(__name__)

MEMORY = "memory"
CPU = "cpu"
GROUP = "treeherd"  # our directory below the agent's own cgroup
CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's lower bound


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def find_hierarchies(cgroup_root: Path, mountinfo: str, self_cgroup: str) -> dict[str, Path]:
    """For "memory" and "cpu": this process's own cgroup directory in that controller's v1 hierarchy,
    if it is mounted at or below `cgroup_root`. `mountinfo` and `self_cgroup` are the texts of
    /proc/self/mountinfo and /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:  # v1 lines name their controllers; the v2 line ("0::/...") does not
            for controller in parts[1].split(","):
                own[controller] = parts[2]
    found: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4 or fields[separator + 1] != "cgroup" or len(fields) < 5:
            continue
        mount_root = PurePosixPath(_unescape(fields[3]))
        mount_point = Path(_unescape(fields[4]))
        if not mount_point.is_relative_to(cgroup_root):
            continue
        controllers = set(fields[separator + 3].split(","))
        for controller in (MEMORY, CPU):
            if controller not in controllers or controller not in own or controller in found:
                continue
            path = PurePosixPath(own[controller])
            # A mount of a subtree (a container's) shows only what lies below its root.
            if path.is_relative_to(mount_root):
                found[controller] = mount_point / path.relative_to(mount_root)
    return found


class TaskLimits(msgspec.Struct, kw_only=True):
    """The limits one task runs under, and the cgroups made for it (saved as its limits.json)."""

    memory_bytes: int = 0
    cpus: float = 0.0
    memory_cgroup: str | None = None
    cpu_cgroup: str | None = None
    rlimit_as: int = 0  # the fallback for memory_bytes when there is no memory cgroup

    @property
    def cgroups(self) -> list[Path]:
        return [Path(path) for path in (self.memory_cgroup, self.cpu_cgroup) if path is not None]

    @property
    def cpu_enforced(self) -> bool:
        return self.cpus <= 0 or self.cpu_cgroup is not None

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

    def oom_killed(self, exit_signal: int | None) -> bool:
        """Whether the task's memory cgroup saw an OOM kill."""
        if self.memory_cgroup is None:
            return False
        cgroup = Path(self.memory_cgroup)
        try:
            control = (cgroup / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in control.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        try:  # kernels before 4.13 do not count kills: a SIGKILL after hitting the limit
            return exit_signal == signal.SIGKILL and int((cgroup / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def kill_all(self) -> None:
        """SIGKILL whatever is still in the task's cgroups, including what left its process group."""
        for cgroup in self.cgroups:
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
            # Leave the agent's own cgroup as we found it: our directory goes with its last task
            # (it is busy while other tasks' cgroups are in it).
            if cgroup.parent.name == GROUP:
                with contextlib.suppress(OSError):
                    cgroup.parent.rmdir()
        return busy


class Limiter:
    """Makes `TaskLimits` for tasks: finds the usable cgroup v1 hierarchies once, falls back otherwise.

    `cgroup_root` None: never use cgroups."""

    def __init__(self, cgroup_root: Path | None) -> None:
        self.cgroup_root = cgroup_root
        self._bases: dict[str, Path] | None = None
        self._warned: set[str] = set()

    @property
    def bases(self) -> dict[str, Path]:
        """Usable controller → the directory the per-task cgroups are made in."""
        if self._bases is None:
            self._bases = self._find_bases()
        return self._bases

    def _find_bases(self) -> dict[str, Path]:
        if self.cgroup_root is None:
            return {}
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as error:
            log.warning("cgroups not usable: %s", error)
            return {}
        bases: dict[str, Path] = {}
        for controller, own in find_hierarchies(self.cgroup_root, mountinfo, self_cgroup).items():
            base = own / GROUP
            try:  # the one sure test of being allowed to make cgroups there
                base.mkdir(exist_ok=True)
            except OSError as error:
                log.warning("cgroup v1 %s hierarchy not usable (%s): %s", controller, base, error)
                continue
            with contextlib.suppress(OSError):  # made again with the first task's cgroup
                base.rmdir()
            bases[controller] = base
        return bases

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    def create(self, task_id: str, *, memory_bytes: int, cpus: float) -> TaskLimits:
        """Make the task's cgroups (only for the limits it has) and set their limits."""
        limits = TaskLimits(memory_bytes=max(memory_bytes, 0), cpus=max(cpus, 0.0))
        if limits.memory_bytes:
            base = self.bases.get(MEMORY)
            cgroup = self._make(base, task_id, {"memory.limit_in_bytes": str(limits.memory_bytes)})
            if cgroup is None:
                self._warn_once(MEMORY, "memory limits fall back to RLIMIT_AS (no usable cgroup v1 memory)")
                limits.rlimit_as = limits.memory_bytes
            else:
                limits.memory_cgroup = str(cgroup)
        if limits.cpus:
            quota = max(MIN_CFS_QUOTA_US, round(limits.cpus * CFS_PERIOD_US))
            settings = {"cpu.cfs_period_us": str(CFS_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
            cgroup = self._make(self.bases.get(CPU), task_id, settings)
            if cgroup is None:
                self._warn_once(CPU, "CPU limits are not enforced (no usable cgroup v1 cpu controller)")
            else:
                limits.cpu_cgroup = str(cgroup)
        return limits

    def _make(self, base: Path | None, task_id: str, settings: dict[str, str]) -> Path | None:
        if base is None:
            return None
        cgroup = base / task_id
        try:
            base.mkdir(exist_ok=True)  # again: it goes when its last task's cgroup is removed
            cgroup.mkdir(exist_ok=True)
            for name, value in settings.items():  # in order: the cfs period before its quota
                (cgroup / name).write_text(value)
        except OSError as error:
            log.warning("task %s: cannot set up cgroup %s: %s", task_id, cgroup, error)
            with contextlib.suppress(OSError):
                cgroup.rmdir()
            return None
        return cgroup
