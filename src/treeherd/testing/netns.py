"""Named network namespaces for the test hosts, with `ip` (iproute2): made and removed, the processes
inside found and ended, code run inside from a thread of this process, and what a crashed earlier run
left behind removed. Names are `treeherd-<pid>-...`, the pid of the process that made them, so that a
run tells its own and a live run's namespaces from leftovers."""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

PREFIX = "treeherd-"
NETNS_DIR = Path("/run/netns")
SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")  # one /24 of it per network: 10.231.X.0/24
COMMAND_SECONDS = 10.0
KILL_SECONDS = 10.0
CLONE_NEWNET = 0x40000000
_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")
T = TypeVar("T")


def unavailable() -> str | None:
    """Why hosts cannot be made here (not root, no `ip`/`nsenter`, namespaces refused), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    probe = f"{PREFIX}{os.getpid()}-_probe"  # never a host's name
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def namespaces() -> list[str]:
    """The names of the named network namespaces (`ip netns list`)."""
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino)


def pids_in_netns(identity: tuple[int, int]) -> list[int]:
    """The live processes whose network namespace is the one with this (device, inode)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # gone, or a zombie (it has left its namespaces)
            continue
        if (stat.st_dev, stat.st_ino) == identity:
            found.append(int(entry.name))
    return found


def kill_all_in(identity: tuple[int, int], what: str) -> int:
    """SIGKILL every process in the namespace until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_SECONDS
    while pids := [pid for pid in pids_in_netns(identity) if pid != os.getpid()]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in {what} survived SIGKILL for {KILL_SECONDS} s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.01)
    return len(killed)


def remove_namespace(name: str) -> None:
    path = NETNS_DIR / name
    with contextlib.suppress(FileNotFoundError):
        kill_all_in(netns_identity(path), name)
    ip("netns", "del", name, check=False)
    if path.exists():
        raise RuntimeError(f"network namespace {name} could not be removed")


def remove_leftovers() -> list[str]:
    """Remove the namespaces a run that is no longer alive left behind (their processes first), and
    return their names. Namespaces of a live run are left alone."""
    removed = []
    for name in namespaces():
        owner = _OWNED.match(name)
        if owner is None or _alive(int(owner.group(1))):
            continue
        remove_namespace(name)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    """Whether the run of process `pid` is still going (for this process: a network is open)."""
    if pid == os.getpid():
        return f"{PREFIX}{pid}-" in _live_networks
    return bool(psutil.pid_exists(pid))


_live_networks: set[str] = set()  # the name prefixes of this process's open networks


def claim(prefix: str) -> None:
    """Names starting with `prefix` belong to a network this process has open: not leftovers."""
    if prefix in _live_networks:
        raise RuntimeError("this process already has a network of test hosts open; close it first")
    _live_networks.add(prefix)


def release(prefix: str) -> None:
    _live_networks.discard(prefix)


def used_networks() -> list[ipaddress.IPv4Network]:
    """The networks of the machine's own addresses and routes (its root namespace)."""
    used = []
    for entry in json.loads(ip("-j", "-4", "addr", "show").stdout or "[]"):
        for info in entry.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(destination, strict=False))
    return used


def free_subnet() -> ipaddress.IPv4Network:
    """The first 10.231.X.0/24 that no address or route of this machine overlaps."""
    used = used_networks()
    for subnet in SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"every /24 of {SUBNETS} is in use on this machine")


def in_namespace(path: Path, fn: Callable[..., T], args: Sequence[Any], timeout: float) -> T:
    """fn(*args) on a new thread that first joins the network namespace at `path`."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns({path}): {os.strerror(error)}")
            finally:
                os.close(fd)
            outcome["value"] = fn(*args)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"in {path.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {path.name} did not return within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def write_file(path: str, text: str) -> None:
    Path(path).write_text(text)
