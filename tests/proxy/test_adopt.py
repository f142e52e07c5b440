"""A new owner of the local haproxy's directory (an agent started again after being killed) adopts the
master the old one left serving: the same master keeps every request answered, takes runtime changes,
and is supervised (replaced when it dies). A master that does not answer is ended and replaced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.proxy.conftest import one_frontend
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.haproxy_supervisor import supervise
from treeherd.render.haproxy import HaproxyOptions, frontends_of_config, render_haproxy
from treeherd.testing.backends import ClientLoop, ask, backends
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually


async def _answers(port: int, name: str) -> bool:
    try:
        return await ask(port, timeout_s=0.5) == name
    except Exception:
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_frontends_are_read_back_from_a_rendered_configuration() -> None:
    state = one_frontend(18001, [], name="api")
    text = render_haproxy(state, HaproxyOptions(admin_socket="/tmp/x.sock"))
    assert frontends_of_config(text) == state.frontend_ports()


async def test_a_new_owner_adopts_the_running_master_and_supervises_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="treeherd.proxy.haproxy")
    workdir = tmp_path / "haproxy"
    first = LocalHaproxy(workdir)
    second = LocalHaproxy(workdir)
    supervisor: asyncio.Task[None] | None = None
    try:
        async with backends("b1", "b2", "b3") as servers:
            port = free_port()
            await first.start(one_frontend(port, servers[:1]))
            await first.apply(one_frontend(port, servers[1:2]))  # a runtime change the file lacks
            await eventually(lambda: _answers(port, "b2"), "b2 to answer")
            master = first.master_pid
            assert master is not None
            # `first` is abandoned, not stopped: its owner was killed.
            with ClientLoop(port) as clients:
                await clients.wait_for(20)
                serving = await second.adopt()
                assert serving == one_frontend(port, servers[1:2])  # read back from haproxy
                result = await second.apply(one_frontend(port, servers[1:2]))
                await clients.wait_for(20)
                await clients.finish()
            assert not result.reloaded and result.commands == []  # already there
            assert clients.failures == []
            assert set(clients.answers) == {"b2"}
            assert second.master_pid == master
            assert f"adopted haproxy master pid {master}" in caplog.text

            changed = await second.apply(one_frontend(port, servers[2:]))
            assert not changed.reloaded and changed.commands  # through the adopted master's runtime API
            await eventually(lambda: _answers(port, "b3"), "b3 to answer through the adopted master")
            assert second.master_pid == master

            supervisor = asyncio.create_task(supervise(second))
            os.kill(master, signal.SIGKILL)
            killed = time.monotonic()

            async def replaced() -> bool:
                pid = second.master_pid
                fresh = pid not in (None, master) and second.restarts == 1
                return fresh and await _answers(port, "b3")

            await eventually(replaced, "a fresh master serving b3", timeout_s=10)
            recovered_s = time.monotonic() - killed
            print(f"adopted master SIGKILL: serving again after {recovered_s:.2f} s")
            assert recovered_s < 2.5
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        await second.stop()
        await first.stop()


async def test_a_master_that_does_not_answer_is_not_adopted(tmp_path: Path) -> None:
    workdir = tmp_path / "haproxy"
    first = LocalHaproxy(workdir)
    second = LocalHaproxy(workdir)
    try:
        async with backends("b1") as servers:
            port = free_port()
            await first.start(one_frontend(port, servers))
            master = first.master_pid
            assert master is not None
            os.kill(master, signal.SIGSTOP)
            assert await second.adopt() is None
            assert second.master_pid is None
            assert _alive(master)  # left to the caller, which ends it before starting afresh
    finally:
        with contextlib.suppress(ProcessLookupError):
            if first.master_pid is not None:
                os.kill(first.master_pid, signal.SIGCONT)
        await second.stop()
        await first.stop()
