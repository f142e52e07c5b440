"""A task's process group: which process it is, whether it or anything in its group still runs,
stopping the whole group, and waiting for the process to end, whether or not this agent is its parent.

A task runs as the leader of its own session, so its process group id is its pid and everything it
spawns (unless it leaves the group) is signalled with it. A process is identified by its pid and its
start time (`ProcessRecord`), since a pid alone may have been reused by the time an agent looks again.
A group id, though, is never reused while the group has members, which is what makes signalling the
group of a leader that has already ended safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess

import msgspec
import psutil

__all__ = [
    "KILL_WAIT_S",
    "ProcessRecord",
    "child",
    "forget_child",
    "group_alive",
    "group_gone",
    "is_running",
    "open_pidfd",
    "readable",
    "register_child",
    "signal_group",
    "stop_group",
]

log = logging.getLogger(__name__)

STOP_POLL_S = 0.05
# How long a SIGKILLed process group may take to disappear.
KILL_WAIT_S = 5.0
# psutil's process start time has clock-tick resolution (10 ms), computed from the boot time.
CREATE_TIME_TOLERANCE_S = 0.05


class ProcessRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The process a task runs as: its pid (also its process group id) and start time (psutil's)."""

    pid: int
    create_time: float
    started_at: float = 0.0  # wall clock, for people reading the file


# Children this Python process started and has not yet collected the exit status of, by pid and start
# time: a controller made later in the same process still learns their exit status, and a Popen is
# never garbage-collected while its child runs.
_children: dict[tuple[int, float], subprocess.Popen[bytes]] = {}


def register_child(record: ProcessRecord, popen: subprocess.Popen[bytes]) -> None:
    _children[(record.pid, record.create_time)] = popen


def child(record: ProcessRecord) -> subprocess.Popen[bytes] | None:
    """The Popen of the recorded process, if this Python process started it and still tracks it."""
    return _children.get((record.pid, record.create_time))


def forget_child(record: ProcessRecord) -> None:
    """Stop tracking the process (its exit status was collected and saved)."""
    _children.pop((record.pid, record.create_time), None)


def _same_start(process: psutil.Process, record: ProcessRecord) -> bool:
    return bool(abs(process.create_time() - record.create_time) <= CREATE_TIME_TOLERANCE_S)


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (a zombie has ended; a reused pid is another process)."""
    popen = child(record)
    if popen is not None:
        return popen.poll() is None
    try:
        process = psutil.Process(record.pid)
        return _same_start(process, record) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def group_alive(record: ProcessRecord) -> bool:
    """Whether anything still runs in the task's process group (its id is the recorded pid)."""
    popen = child(record)
    if popen is not None:
        popen.poll()  # collect an ended leader, so that it no longer counts
    try:
        leader = psutil.Process(record.pid)
        if not _same_start(leader, record):
            # The pid is another process's: a group id is not reused while the group has members.
            return False
        if leader.status() != psutil.STATUS_ZOMBIE:
            return True  # a session leader cannot leave its group
    except psutil.NoSuchProcess:
        pass
    try:
        os.killpg(record.pid, 0)
    except ProcessLookupError:
        return False
    # The leader has ended but the group exists: something other than zombies left in it?
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == record.pid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def signal_group(record: ProcessRecord, signum: int) -> bool:
    """Send `signum` to the task's process group if it is still there; whether it was."""
    if not group_alive(record):
        return False
    try:
        os.killpg(record.pid, signum)
    except ProcessLookupError:
        return False
    return True


async def group_gone(record: ProcessRecord, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while group_alive(record):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(STOP_POLL_S)
    return True


async def stop_group(record: ProcessRecord, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL it after `grace_s`; returns once nothing of it runs."""
    if not signal_group(record, signal.SIGTERM):
        return
    if await group_gone(record, grace_s):
        return
    log.info("process group %d still there %gs after SIGTERM: killing it", record.pid, grace_s)
    signal_group(record, signal.SIGKILL)
    if not await group_gone(record, KILL_WAIT_S):
        raise RuntimeError(f"process group {record.pid} still there {KILL_WAIT_S:g}s after SIGKILL")


def open_pidfd(record: ProcessRecord) -> int | None:
    """A descriptor that becomes readable when the process ends (None: not available, or gone)."""
    try:
        descriptor = os.pidfd_open(record.pid)
    except (AttributeError, OSError):
        return None
    try:
        if _same_start(psutil.Process(record.pid), record):
            return descriptor
    except psutil.NoSuchProcess:
        pass
    os.close(descriptor)
    return None


async def readable(descriptor: int | None, timeout_s: float) -> None:
    """Wait until `descriptor` is readable, at most `timeout_s` (all of it without a descriptor)."""
    if descriptor is None:
        await asyncio.sleep(timeout_s)
        return
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(descriptor, wake)
    except NotImplementedError:
        await asyncio.sleep(timeout_s)
        return
    try:
        await asyncio.wait([ready], timeout=timeout_s)
    finally:
        loop.remove_reader(descriptor)
        ready.cancel()
