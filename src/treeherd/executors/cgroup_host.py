"""The cgroups this agent makes its tasks' cgroups in, found and set up once when it starts: the
usable v1 hierarchies, and the unified (v2) one with the controllers enabled for the tasks.

See `limits` for where tasks' cgroups go and why an agent alone in its v2 cgroup moves itself into a
leaf; `support()` is what the agent reports in its node description.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from treeherd.executors.cgroups import CPU, MEMORY, PIDS, CgroupHost, detect, find_unified
from treeherd.model.objects import LimitSupport

__all__ = ["GROUP", "HostCgroups"]

log = logging.getLogger(__name__)

GROUP = "treeherd"  # our directory below the agent's own cgroup
AGENT_LEAF = "agent"  # where an agent alone in its v2 cgroup moves itself


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class HostCgroups:
    """What `detect` found, and which of it this process may use."""

    def __init__(self, found: CgroupHost) -> None:
        self.found = found
        self.bases: dict[str, Path] = {}  # usable v1 controller → where tasks' cgroups are made
        self.unified_base: Path | None = None  # where tasks' unified cgroups are made
        self.unified_enabled: list[str] = []  # controllers enabled for them

    @classmethod
    def detect(cls, cgroup_root: Path | None) -> HostCgroups:
        """Look at this process's cgroups (none when `cgroup_root` is None) and set up ours."""
        if cgroup_root is None:
            return cls(CgroupHost())
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as error:
            log.warning("cgroups not usable: %s", error)
            return cls(CgroupHost())
        unified = find_unified(cgroup_root, mountinfo, self_cgroup)
        controllers = _read(unified / "cgroup.controllers") if unified is not None else None
        host = cls(detect(cgroup_root, mountinfo, self_cgroup, controllers))
        host._set_up()
        log.info("cgroups %s; limits enforced: %s", host.found.mode, host.support())
        return host

    def support(self) -> LimitSupport:
        """Which limits this host enforces and how, for the agent's node description."""

        def how(controller: str) -> str:
            if controller in self.bases:
                return "cgroup v1"
            if controller in self.unified_enabled:
                return "cgroup v2"
            return "rlimit (address space)" if controller == MEMORY else ""

        return LimitSupport(
            cgroups=self.found.mode,
            memory=how(MEMORY),
            cpu=how(CPU),
            pids=how(PIDS),
            task_tree="cgroup v2" if self.unified_base is not None else "process group",
        )

    def _set_up(self) -> None:
        for controller, own_v1 in self.found.v1.items():
            base = own_v1 / GROUP
            try:  # the one sure test of being allowed to make cgroups there
                base.mkdir(exist_ok=True)
            except OSError as error:
                log.warning("cgroup v1 %s hierarchy not usable (%s): %s", controller, base, error)
                continue
            with contextlib.suppress(OSError):  # made again with the first task's cgroup
                base.rmdir()
            self.bases[controller] = base
        own = self.found.unified
        if own is None:
            return
        base = own / GROUP
        try:
            base.mkdir(exist_ok=True)
        except OSError as error:
            log.warning("cgroup v2 hierarchy not usable (%s): %s", base, error)
            return
        self.unified_base = base
        wanted = [c for c in self.found.unified_controllers if c not in self.bases]
        self.unified_enabled = [c for c in wanted if self._enable(own, c) and self._enable(base, c)]
        with contextlib.suppress(OSError):  # made again (controllers enabled) with the first task's
            base.rmdir()

    def _enable(self, cgroup: Path, controller: str) -> bool:
        control = cgroup / "cgroup.subtree_control"
        if controller in (_read(control) or "").split():
            return True
        try:
            control.write_text(f"+{controller}")
            return True
        except OSError as error:
            if error.errno == errno.EBUSY and cgroup.name != GROUP and self._leave(cgroup):
                return self._enable(cgroup, controller)
            log.warning("cgroup v2: cannot enable %s in %s: %s", controller, cgroup, error)
            return False

    def _leave(self, own: Path) -> bool:
        """Move this process into a leaf below its cgroup, if it is alone there (cgroup v2 enables
        controllers only in a cgroup without processes of its own)."""
        procs = (_read(own / "cgroup.procs") or "").split()
        if procs != [str(os.getpid())]:
            log.warning(
                "cgroup v2: %s holds other processes than the agent (%s): run the agent in a cgroup of "
                "its own (systemd: Delegate=yes) to enforce limits",
                own,
                " ".join(procs[:5]),
            )
            return False
        try:
            (own / AGENT_LEAF).mkdir(exist_ok=True)
            (own / AGENT_LEAF / "cgroup.procs").write_text("0")
        except OSError as error:
            log.warning("cgroup v2: cannot move the agent into %s: %s", own / AGENT_LEAF, error)
            return False
        log.info("cgroup v2: moved the agent into %s to enable controllers below it", own / AGENT_LEAF)
        return True
