"""Which cgroups this host has and where this process's own cgroups are: pure functions over the
texts of /proc/self/mountinfo, /proc/self/cgroup and the unified hierarchy's cgroup.controllers.

A host is one of:
- `v1`: a hierarchy per controller (or a few combined), no unified one;
- `hybrid`: v1 hierarchies for the controllers plus a cgroup2 mount beside them (systemd's
  /sys/fs/cgroup/unified), usually with no controllers, but where processes can still be placed,
  found (`cgroup.procs`) and ended at once (`cgroup.kill`, Linux 5.14+);
- `v2`: the unified hierarchy mounted at the cgroup root (Debian 12, Ubuntu 22.04+, Fedora), every
  controller in it;
- `none`: no cgroup mounted at or below the root we look in (or cgroups not wanted).
A controller is in one hierarchy only: on a hybrid host whatever v1 holds is absent from cgroup2.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Literal

import msgspec

__all__ = ["CPU", "MEMORY", "PIDS", "CgroupHost", "Mode", "detect", "find_hierarchies", "find_unified"]

MEMORY = "memory"
CPU = "cpu"
PIDS = "pids"
CONTROLLERS = (MEMORY, CPU, PIDS)
Mode = Literal["v1", "hybrid", "v2", "none"]


class CgroupHost(msgspec.Struct, frozen=True, kw_only=True):
    """What `detect` found: the mode, this process's own cgroup directory in each v1 hierarchy of the
    controllers we use, its own directory in the unified hierarchy, and the controllers there."""

    mode: Mode = "none"
    v1: dict[str, Path] = {}
    unified: Path | None = None
    unified_controllers: list[str] = []


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


def _mounts(mountinfo: str, cgroup_root: Path) -> list[tuple[str, PurePosixPath, Path, set[str]]]:
    """(fstype, mount root, mount point, super options) of each cgroup/cgroup2 mount under the root."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4 or fields[separator + 1] not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(_unescape(fields[4]))
        if not mount_point.is_relative_to(cgroup_root):
            continue
        options = set(fields[separator + 3].split(","))
        mounts.append((fields[separator + 1], PurePosixPath(_unescape(fields[3])), mount_point, options))
    return mounts


def _own(self_cgroup: str) -> tuple[dict[str, str], str | None]:
    """From /proc/self/cgroup: v1 controller → our cgroup path, and our path in the unified one."""
    v1: dict[str, str] = {}
    unified = None
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and not parts[1]:
            unified = parts[2]
        elif parts[1]:
            for controller in parts[1].split(","):
                v1[controller] = parts[2]
    return v1, unified


def _below(mount_root: PurePosixPath, mount_point: Path, path: str) -> Path | None:
    # A mount of a subtree (a container's) shows only what lies below its root.
    own = PurePosixPath(path)
    if not own.is_relative_to(mount_root):
        return None
    return mount_point / own.relative_to(mount_root)


def find_hierarchies(cgroup_root: Path, mountinfo: str, self_cgroup: str) -> dict[str, Path]:
    """For "memory", "cpu" and "pids": this process's own cgroup directory in that controller's v1
    hierarchy, if it is mounted at or below `cgroup_root`."""
    own, _ = _own(self_cgroup)
    found: dict[str, Path] = {}
    for fstype, mount_root, mount_point, options in _mounts(mountinfo, cgroup_root):
        if fstype != "cgroup":
            continue
        for controller in CONTROLLERS:
            if controller in options and controller in own and controller not in found:
                path = _below(mount_root, mount_point, own[controller])
                if path is not None:
                    found[controller] = path
    return found


def find_unified(cgroup_root: Path, mountinfo: str, self_cgroup: str) -> Path | None:
    """This process's own cgroup directory in the unified (cgroup2) hierarchy, if one is mounted at
    or below `cgroup_root`."""
    _, own = _own(self_cgroup)
    if own is None:
        return None
    for fstype, mount_root, mount_point, _ in _mounts(mountinfo, cgroup_root):
        if fstype == "cgroup2" and (path := _below(mount_root, mount_point, own)) is not None:
            return path
    return None


def detect(
    cgroup_root: Path, mountinfo: str, self_cgroup: str, unified_controllers: str | None
) -> CgroupHost:
    """The host's cgroups; `unified_controllers` is the text of cgroup.controllers in our own
    directory of the unified hierarchy (None: none mounted or unreadable)."""
    v1 = find_hierarchies(cgroup_root, mountinfo, self_cgroup)
    unified = find_unified(cgroup_root, mountinfo, self_cgroup)
    has_v1 = any(fstype == "cgroup" for fstype, *_ in _mounts(mountinfo, cgroup_root))
    controllers = sorted(set((unified_controllers or "").split()) & set(CONTROLLERS))
    modes: dict[tuple[bool, bool], Mode] = {
        (True, True): "hybrid",
        (True, False): "v2",
        (False, True): "v1",
        (False, False): "none",
    }
    mode = modes[(unified is not None, has_v1)]
    return CgroupHost(
        mode=mode,
        v1={c: v1[c] for c in CONTROLLERS if c in v1},
        unified=unified,
        unified_controllers=controllers if unified is not None else [],
    )
