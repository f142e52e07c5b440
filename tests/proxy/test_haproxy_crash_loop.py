"""The local haproxy in a crash loop, against the real haproxy: a master that cannot start again (its
frontend port is taken) is retried with a growing delay, logged as a crash loop naming the cause, never
in a busy loop, and a fresh master serves the state last applied once the cause is gone. The owner is
told each failed restart, the restart, and the crash-loop alert: fired once, resolved once the fresh
master has stayed up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time

import pytest

from tests.proxy.conftest import one_frontend
from tests.proxy.test_supervision import _answers, group_of
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.haproxy_supervisor import supervise
from treeherd.proxy.supervise import RestartPolicy
from treeherd.testing.backends import backends
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually

STABLE_S = 3.0  # shorter than the default 10 s: the test waits it out


def _failed(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "did not start again" in r.getMessage()]


def _crash_loops(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "crash loop:" in r.getMessage()]


async def test_a_master_that_cannot_start_backs_off_and_recovers(
    local_haproxy: LocalHaproxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="treeherd.proxy.haproxy")
    async with backends("b1", "b2") as servers:
        port = free_port()
        await local_haproxy.start(one_frontend(port, servers[:1]))
        await local_haproxy.apply(one_frontend(port, servers[1:]))  # the state a restart must serve
        await eventually(lambda: _answers(port, "b2"), "b2 to answer")
        old = local_haproxy.master_pid
        assert old is not None
        events: list[tuple[str, str, float]] = []
        supervisor = asyncio.create_task(
            supervise(
                local_haproxy,
                policy=RestartPolicy(stable_s=STABLE_S),
                on_event=lambda type, reason, _figures: events.append((type, reason, time.monotonic())),
            )
        )
        blocker = socket.socket()
        try:
            await asyncio.sleep(0.1)  # the supervisor is watching
            # No await from the kill to the listen: the supervisor cannot restart in between.
            os.killpg(old, signal.SIGKILL)
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            deadline = time.monotonic() + 5
            while True:
                try:
                    blocker.bind(("127.0.0.1", port))
                    break
                except OSError:  # the killed haproxy's listener is not closed yet
                    assert time.monotonic() < deadline, "the killed haproxy kept its port"
                    time.sleep(0.01)  # noqa: ASYNC251 - no await: the supervisor must not run yet
            blocker.listen()
            began = time.monotonic()
            await eventually(lambda: len(_failed(caplog)) >= 3, "three failed restarts", timeout_s=20)
            await asyncio.sleep(max(0.0, 8.0 - (time.monotonic() - began)))
            failures = _failed(caplog)
            elapsed = time.monotonic() - began
            assert "Address already in use" in failures[-1].getMessage(), failures[-1].getMessage()
            loops = _crash_loops(caplog)
            assert loops and "crash loop" in loops[-1].getMessage()
            # Delays 0, 1, 2, 4 s: about five attempts in 8 s; a busy loop would make dozens.
            assert 3 <= len(failures) <= 6, [r.getMessage()[:120] for r in failures]
            gaps = [b.created - a.created for a, b in itertools.pairwise(failures)]
            assert gaps[1] >= 1.5 and gaps == sorted(gaps), gaps  # 1, 2, 4 s: the delay grows
            assert local_haproxy.master_pid is None or not group_of(old)
            blocker.close()
            freed = time.monotonic()

            async def fresh_master_serves_b2() -> bool:
                pid = local_haproxy.master_pid
                return pid not in (None, old) and await _answers(port, "b2")

            # The longest wait now is the current delay (at most 8 s this early) plus a start.
            await eventually(fresh_master_serves_b2, "a fresh master serving b2", timeout_s=15)
            recovered_s = time.monotonic() - freed
            print(f"haproxy crash loop: {len(failures)} failed starts in {elapsed:.1f} s, gaps"
                  f" {[round(g, 2) for g in gaps]} s; serving again {recovered_s:.2f} s after the port was freed")  # fmt: skip

            async def restart_logged() -> bool:
                return any("proxy restarted" in r.getMessage() for r in caplog.records)

            await eventually(restart_logged, "the restart to be logged", timeout_s=5)
            assert len(_failed(caplog)) <= len(failures) + 1  # one more at most, none once it serves

            # The owner heard it all: the alert fired once, each failed start, the restart with its cause.
            types = [t for t, _, _ in events]
            assert types.count("alert_firing") == 1, events
            assert types[:2] == ["error", "alert_firing"], events  # the restart at once failed: a crash loop
            assert all("Address already in use" in r for t, r, _ in events if t == "error"), events
            restarted = [(r, at) for t, r, at in events if t == "restarted"]
            assert len(restarted) == 1 and restarted[0][0].startswith("proxy restarted: "), events

            # The alert resolves once the fresh master has stayed up STABLE_S, not before.
            await eventually(
                lambda: "alert_resolved" in [t for t, _, _ in events], "the alert to resolve", timeout_s=10
            )
            resolved_at = next(at for t, _, at in events if t == "alert_resolved")
            assert resolved_at - restarted[0][1] >= STABLE_S, events
            assert [t for t, _, _ in events][-1] == "alert_resolved"
        finally:
            blocker.close()
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
