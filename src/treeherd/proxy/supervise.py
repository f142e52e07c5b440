"""When to start a proxy master again after it died: at once the first time, then with exponential
backoff while it keeps dying soon after each restart (a crash loop), never in a busy loop.

`after_death` is a pure function of the restart history and the time of death (passed in, so tests
use explicit times); the owners (the gateway for nginx, the local haproxy for haproxy) apply it.
`stayed_up` says when a crash loop is over (its alert resolves).
`end_group` ends what a dead master left: its workers share its process group and outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import msgspec
import psutil

__all__ = [
    "RestartDecision",
    "RestartPolicy",
    "Restarts",
    "after_death",
    "death_cause",
    "end_group",
    "group_members",
    "started",
    "stayed_up",
]


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A master that lives `stable_s` after a restart is healthy again; one that dies sooner waits
    `first_delay_s`, doubled at each further quick death, at most `max_delay_s`."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_s: float = 10.0


class Restarts(msgspec.Struct, frozen=True, kw_only=True):
    """The restart history: how many deaths in a row came soon after a restart, and when the last
    restart was (None: the master was never restarted by its owner, only started or adopted)."""

    quick_deaths: int = 0
    started_at: float | None = None


class RestartDecision(msgspec.Struct, frozen=True, kw_only=True):
    """How long to wait before the next start, and whether this death is part of a crash loop."""

    delay_s: float
    crash_loop: bool
    quick_deaths: int


def after_death(history: Restarts, now: float, policy: RestartPolicy | None = None) -> RestartDecision:
    """The decision for a master found dead at `now` (monotonic seconds)."""
    rules = policy or RestartPolicy()
    if history.started_at is None or now - history.started_at >= rules.stable_s:
        return RestartDecision(delay_s=0.0, crash_loop=False, quick_deaths=0)
    deaths = history.quick_deaths + 1
    delay = min(rules.max_delay_s, rules.first_delay_s * 2.0 ** min(deaths - 1, 32))
    return RestartDecision(delay_s=delay, crash_loop=True, quick_deaths=deaths)


def stayed_up(history: Restarts, now: float, policy: RestartPolicy | None = None) -> bool:
    """Has the master, alive at `now`, lived `stable_s` since its last restart? (A crash loop is over
    then: its alert resolves.)"""
    rules = policy or RestartPolicy()
    return history.started_at is not None and now - history.started_at >= rules.stable_s


def started(decision: RestartDecision, now: float) -> Restarts:
    """The history once the master was started again at `now` after `decision`."""
    return Restarts(quick_deaths=decision.quick_deaths, started_at=now)


def death_cause(pid: int, returncode: int | None) -> str:
    """`master pid 123 died (signal 9)`; `returncode` None when the exit status is unknown (a master
    that is not this process's child)."""
    if returncode is None:
        return f"master pid {pid} died (exit status unknown: not our child)"
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"master pid {pid} died (signal {number})"
        return f"master pid {pid} died (signal {number}, {name})"
    return f"master pid {pid} exited with status {returncode}"


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of process group `pgid`."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def _gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)  # dead; its new parent reaps it when it will
    except psutil.Error:
        return True


async def end_group(pgid: int, *, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL process group `pgid` and wait until its members are gone (or zombies); returns the pids
    that were ended. Raises TimeoutError if one outlives `timeout_s`. The group id stays reserved while
    any member lives, so it cannot name an unrelated group."""
    members = group_members(pgid)
    if not members:
        return []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while not all(_gone(p) for p in members):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"processes {[p.pid for p in members if not _gone(p)]} outlived SIGKILL")
        await asyncio.sleep(0.01)
    return [p.pid for p in members]
