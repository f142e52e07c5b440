"""The gateway's nginx master in a crash loop, against the real nginx: a master that cannot start
(its listen port is taken) is retried with a growing delay, recorded as a crash loop naming the cause,
never in a busy loop, and a fresh master serves the current configuration once the cause is gone. The
crash loop fires an alert (`treeherd alerts`), resolved once the fresh master has stayed up."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.test_gateway import HOST, Edge
from tests.gateway.helpers import served_by
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def edge(tmp_path: Path, manager: ManagerProcess) -> Iterator[Edge]:
    built = Edge(tmp_path, manager)
    try:
        built.start()
        yield built
    finally:
        built.close()


def _group(pgid: int) -> list[int]:
    """Live processes of process group `pgid`, counted in the OS."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return found


def _failed_starts(edge: Edge) -> list[dict[str, Any]]:
    return [e for e in edge.events("rollback") if "nginx did not start" in e["reason"]]


def _watch_failures(edge: Edge) -> list[dict[str, Any]]:
    """Failed starts by the master watch (not by the render of a change)."""
    return [e for e in _failed_starts(edge) if "found by the master watch" in e["reason"]]


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


def _crash_loops(edge: Edge) -> list[dict[str, Any]]:
    return [e for e in edge.events("error") if e["reason"].startswith("crash loop:")]


def _nginx_alert(edge: Edge) -> dict[str, Any] | None:
    """The firing crash-loop alert of the gateway's nginx, as `GET /api/v1/alerts` lists it."""
    alerts = edge.client.get("/api/v1/alerts", list)
    return next((a for a in alerts if a["kind"] == "crash_loop" and a["subject"] == "nginx"), None)


def _occupy(port: int) -> socket.socket:
    """Listen on 127.0.0.1:port. SO_REUSEADDR only lets the bind pass a connection of the dead nginx
    left in TIME_WAIT; Linux still refuses a second socket listening on the port (nginx's)."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    return blocker


def test_a_master_that_cannot_start_backs_off_and_recovers(edge: Edge) -> None:
    assert edge.gateway is not None
    gateway = edge.gateway.process.pid
    old = edge.gateway.nginx_pid()
    assert old is not None
    # Freeze the gateway so the port is taken before it notices the dead master.
    os.kill(gateway, signal.SIGSTOP)
    try:
        os.killpg(old, signal.SIGKILL)  # master and workers at once: the port frees now
        wait_for(lambda: not _group(old), "the killed nginx to be gone", 5)
        blocker = _occupy(edge.port)
    finally:
        os.kill(gateway, signal.SIGCONT)
    try:
        began = time.monotonic()
        # A change made while nginx is down: its render fails too, and the fresh master must serve it.
        edge.bind("api-2", "shop.api", 0)
        edge.bind("api-3", "shop.api", 0)
        loops = wait_for(lambda: _crash_loops(edge), "the crash loop to be recorded", 20)
        assert "Address already in use" in loops[-1]["reason"], loops
        alert = wait_for(lambda: _nginx_alert(edge), "the crash-loop alert to fire", 10)
        assert alert["source"] == "edge" and "crash loop:" in alert["reason"], alert
        shown = edge.manager_cli("alerts")
        assert "crash_loop" in shown and "nginx" in shown and "Address already in use" in shown, shown
        # Three start attempts by the watch: at once, then 1 s and 2 s after the previous failure.
        wait_for(lambda: len(_watch_failures(edge)) >= 3, "three failed restarts", 30)
        elapsed = time.monotonic() - began
        failures = _failed_starts(edge)
        assert all("Address already in use" in f["reason"] for f in failures), failures
        # A busy loop would start nginx dozens of times; each attempt here takes ~2.5 s of nginx's own
        # bind retries, so count and spacing are both checked.
        assert len(failures) <= elapsed / 2.0 + 2, (elapsed, edge.record()["recent"])
        for loop in _crash_loops(edge):
            after = [_at(f) for f in _watch_failures(edge) if _at(f) > _at(loop)]
            if after:  # the next start waited the delay, then nginx's ~2.5 s of bind retries
                assert after[0] - _at(loop) >= loop["figures"]["delay_s"] + 2.0, edge.record()["recent"]
        assert edge.gateway.process.poll() is None, "the gateway died"
        assert edge.gateway.nginx_pid() is None
        delays = [e["figures"]["delay_s"] for e in _crash_loops(edge)]
    finally:
        blocker.close()
    freed = time.monotonic()

    def serving_current() -> bool:
        assert edge.gateway is not None
        pid = edge.gateway.nginx_pid()
        return pid not in (None, old) and all(served_by(edge.port, "/api", HOST) == "api-1" for _ in range(6))

    # The longest wait now is the current delay (at most 4 s this early, capped at 30 s) plus a start.
    wait_for(serving_current, "a fresh master on the current configuration", 15, poll_s=0.1)
    recovered_s = time.monotonic() - freed
    assert recovered_s < 12.0, f"recovered {recovered_s:.1f} s after the port was freed"
    assert served_by(edge.port, "/", HOST) == "web-1"
    # No change was made after the port was freed: the master watch started the fresh master.
    # nginx serves a moment before the gateway has recorded the start with the manager.
    restarted = wait_for(
        lambda: [e for e in edge.events("started") if e["reason"].startswith("proxy restarted:")],
        "the restart to be recorded",
        5,
    )
    assert "found by the master watch" in restarted[-1]["reason"], edge.record()["recent"]
    assert f"master pid {old} died" in restarted[-1]["reason"]
    assert delays[0] == 1 and delays == sorted(delays), delays  # 1, 2, 4 ... s: it grows inside the loop

    # One alert for the whole loop; it resolves once the fresh master has stayed up (10 s), not before.
    assert len(edge.events("alert_firing")) == 1, edge.record()["recent"]
    assert _nginx_alert(edge) is not None
    wait_for(lambda: _nginx_alert(edge) is None, "the crash-loop alert to resolve", 20)
    resolved = edge.events("alert_resolved")
    assert resolved and "crash loop over" in resolved[-1]["reason"], edge.record()["recent"]
    assert _at(resolved[-1]) - _at(restarted[-1]) >= 10.0, edge.record()["recent"]
    assert edge.record()["crash_loop"] is None
    assert "nginx" not in edge.manager_cli("alerts")
