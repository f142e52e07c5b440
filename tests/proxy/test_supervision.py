"""A supervised local haproxy whose master dies (SIGKILL) or stops answering its CLI socket (SIGSTOP):
its whole process group is ended and a fresh master serves the state last applied, runtime changes
included."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import psutil
import pytest

from tests.proxy.conftest import one_frontend
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.haproxy_supervisor import supervise
from treeherd.proxy.supervise import RestartPolicy
from treeherd.testing.backends import ask, backends
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually


def group_of(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pid:
                found.append(process)
    return found


async def _restarted_after(
    local_haproxy: LocalHaproxy, signum: signal.Signals, caplog: pytest.LogCaptureFixture
) -> tuple[float, int, list[psutil.Process]]:
    """Start on b1, switch to b2 at run time, `signum` the master; (seconds until a fresh master
    serves b2, the old master's pid, the old group's processes)."""
    caplog.set_level(logging.WARNING, logger="treeherd.proxy.haproxy")
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:1]))
        result = await local_haproxy.apply(one_frontend(port, servers[1:]))
        assert not result.reloaded  # a runtime change: only the state kept by the owner has it
        await eventually(lambda: _answers(port, "b2"), "b2 alone to answer")
        old = local_haproxy.master_pid
        assert old is not None
        old_group = group_of(old)
        assert len(old_group) >= 2  # the master and its worker
        supervisor = asyncio.create_task(supervise(local_haproxy))
        try:
            os.kill(old, signum)
            signalled = time.monotonic()

            async def fresh_master_serves_b2() -> bool:
                pid = local_haproxy.master_pid
                fresh = pid not in (None, old) and local_haproxy.restarts == 1
                return fresh and await _answers(port, "b2")

            await eventually(fresh_master_serves_b2, "a fresh master serving b2", timeout_s=10)
            recovered_s = time.monotonic() - signalled
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        assert [r.answer for r in [await _ask_many(port)]] == [{"b2"}]
    return recovered_s, old, old_group


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Answers:
    def __init__(self, answer: set[str]) -> None:
        self.answer = answer


async def _ask_many(port: int, count: int = 10) -> _Answers:
    return _Answers({await ask(port) for _ in range(count)})


async def _answers(port: int, name: str) -> bool:
    try:
        return await ask(port, timeout_s=0.5) == name
    except Exception:
        return False


async def test_a_killed_master_is_replaced_with_no_old_worker_left(
    local_haproxy: LocalHaproxy, caplog: pytest.LogCaptureFixture
) -> None:
    recovered_s, old, old_group = await _restarted_after(local_haproxy, signal.SIGKILL, caplog)
    print(f"haproxy master SIGKILL: serving again after {recovered_s:.2f} s")
    assert recovered_s < 3.0
    assert not any(_alive(p) for p in old_group)
    assert local_haproxy.restarts == 1
    assert f"proxy restarted: master pid {old} died (signal 9, SIGKILL)" in caplog.text


async def test_a_master_silent_on_its_cli_socket_is_replaced(
    local_haproxy: LocalHaproxy, caplog: pytest.LogCaptureFixture
) -> None:
    recovered_s, old, old_group = await _restarted_after(local_haproxy, signal.SIGSTOP, caplog)
    print(f"haproxy master SIGSTOP: serving again after {recovered_s:.2f} s")
    assert not any(_alive(p) for p in old_group)
    assert f"master pid {old} stopped answering its CLI socket" in caplog.text


async def test_a_new_owner_says_once_that_no_crash_loop_goes_on_after_the_master_stayed_up(
    local_haproxy: LocalHaproxy,
) -> None:
    """An owner that just started (an agent that restarted) cannot know whether the one before it left the
    crash-loop alert firing: once the master has stayed up, it says so, once (the manager drops it when
    no alert fires)."""
    events: list[tuple[str, str]] = []
    async with backends("b1") as servers:
        await local_haproxy.start(one_frontend(free_port(), servers))
        supervisor = asyncio.create_task(
            supervise(
                local_haproxy,
                policy=RestartPolicy(stable_s=1.0),
                on_event=lambda type, reason, _figures: events.append((type, reason)),
            )
        )
        try:
            await eventually(lambda: events != [], "the resolution", timeout_s=5)
            await asyncio.sleep(1.5)  # more than stable_s again: nothing more to say
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
    assert [t for t, _ in events] == ["alert_resolved"], events
    assert local_haproxy.restarts == 0
