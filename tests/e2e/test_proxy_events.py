"""What happens to an agent's local haproxy reaches the manager, end to end with the real haproxy: a
killed (-9) or stopped (SIGSTOP) master is replaced and `treeherd events` shows `proxy restarted: ...`
with the host and the cause; a crash loop fires an alert (`treeherd alerts`) that resolves once the
fresh master has stayed up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import TASK_HTTP_SERVER, Cluster, running_cluster, try_call
from tests.e2e.test_dependencies import appprocess_env, endpoints, get
from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.requests import ClusterUpdate, ServiceCreate
from treeherd.model.services import Placement, PortSpec, TaskSpec
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        ("host-a",),
        settings=ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, endpoint_ttl_s=3.0),
        executor="process",
    ) as cluster:
        yield cluster


def _serving(cluster: Cluster) -> str:
    """Service `app` on host-a reaching `api` through the local haproxy; the local address."""
    api = TaskSpec(
        command=[sys.executable, "-c", TASK_HTTP_SERVER],
        ports=[PortSpec(name="http")],
        health=HealthCheck(kind="http", interval_s=0.2, timeout_s=1.0, retries=1),
    )
    app = TaskSpec(
        command=["sleep", "300"],
        depends_on=[Dependency(service="api")],
        placement=Placement(constraints=["node.hostname==host-a"]),
    )
    with cluster.client() as client:
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name="api", node="corp", replicas=1, task=api)
        )
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name="app", node="corp", replicas=1, task=app)
        )
    wait_for(lambda: len(endpoints(cluster, "api")) == 1, "an api endpoint")
    address = wait_for(lambda: appprocess_env(cluster).get("TREEHERD_DEP_API"), "app's TREEHERD_DEP_API")
    wait_for(lambda: try_call(get, address), "api through the local port")
    return str(address)


def _master(cluster: Cluster) -> int:
    try:
        return int((cluster.tmp / "host-a" / "haproxy" / "haproxy.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _revision(cluster: Cluster) -> int:
    with cluster.client() as client:
        return int(client.get("/api/v1/gateway/snapshot", dict)["revision"])


def _next_proxy_event(cluster: Cluster, since: int) -> str:
    """The next change to a proxy record after revision `since`, as `treeherd events` shows it."""
    shown = cluster.cli("events", "--kind", "proxy", "--since", str(since), "--count", "1")
    return str(shown.splitlines()[-1])


def _occupy(port: int) -> socket.socket:
    """Listen on 127.0.0.1:port as soon as the killed haproxy has let it go (bounded)."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
    deadline = time.monotonic() + 5
    while True:
        try:
            blocker.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() >= deadline:
                blocker.close()
                raise
            time.sleep(0.01)
    blocker.listen()
    return blocker


def _haproxy_alert(cluster: Cluster) -> dict[str, Any] | None:
    with cluster.client() as client:
        alerts = client.get("/api/v1/alerts", list)
    return next((a for a in alerts if a["kind"] == "crash_loop" and a["subject"] == "haproxy"), None)


def test_a_replaced_haproxy_master_is_an_event_with_the_host_and_the_cause(cluster: Cluster) -> None:
    address = _serving(cluster)
    master = _master(cluster)
    assert master and psutil.pid_exists(master)

    since = _revision(cluster)
    os.kill(master, signal.SIGKILL)
    line = _next_proxy_event(cluster, since)
    assert "proxy" in line and "host-a" in line, line
    assert f"haproxy proxy restarted: master pid {master} died (signal 9, SIGKILL)" in line, line
    wait_for(lambda: _master(cluster) not in (0, master) and try_call(get, address), "a fresh master serving")

    # A master that stops answering its CLI socket (SIGSTOP) is replaced too, and says so.
    # (Stopped this soon after the first restart, it also counts as a crash loop: its alert may fire.)
    stopped = _master(cluster)
    os.kill(stopped, signal.SIGSTOP)
    try:
        cause = f"proxy restarted: master pid {stopped} stopped answering its CLI socket"

        def restarted() -> list[str]:
            with cluster.client() as client:
                recent = client.get("/api/v1/proxies/host-a", dict)["recent"]
            return [e["reason"] for e in recent if e["type"] == "restarted" and e["reason"].startswith(cause)]

        wait_for(restarted, "the restart of the stopped master to be recorded", 15)
        wait_for(lambda: _master(cluster) not in (0, stopped) and try_call(get, address), "a fresh master")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stopped, signal.SIGCONT)  # if the agent did not end it, it must not stay stopped
    shown = cluster.cli("proxy", "show", "host-a")
    assert shown.count("proxy restarted:") == 2 and "SIGKILL" in shown, shown
    assert "host-a" in cluster.cli("proxy", "ls")


def test_a_haproxy_crash_loop_fires_an_alert_that_resolves_once_the_master_stays_up(
    cluster: Cluster,
) -> None:
    address = _serving(cluster)
    port = int(address.rsplit(":", 1)[1])
    master = _master(cluster)
    agent = cluster.agents["host-a"].process
    assert master and agent is not None
    # Freeze the agent so the port is taken before it notices the dead master (well within its grace).
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        os.killpg(master, signal.SIGKILL)
        wait_for(
            lambda: not psutil.pid_exists(master) or psutil.Process(master).status() == "zombie",
            "haproxy gone",
            5,
        )
        blocker = _occupy(port)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    try:
        alert = wait_for(lambda: _haproxy_alert(cluster), "the crash-loop alert to fire", 20)
        assert alert["source"] == "host-a" and "crash loop:" in alert["reason"], alert
        shown = cluster.cli("alerts")
        assert "crash_loop" in shown and "host-a" in shown and "haproxy" in shown, shown
        with cluster.client() as client:
            record = client.get("/api/v1/proxies/host-a", dict)
        assert any(
            "Address already in use" in e["reason"] for e in record["recent"] if e["type"] == "error"
        ), record
    finally:
        blocker.close()
    freed = time.monotonic()
    wait_for(
        lambda: _master(cluster) not in (0, master) and try_call(get, address), "a fresh master serving", 20
    )
    print(f"haproxy crash loop: serving again {time.monotonic() - freed:.2f} s after the port was freed")
    # Resolved once the fresh master has stayed up 10 s, not before.
    assert _haproxy_alert(cluster) is not None
    wait_for(lambda: _haproxy_alert(cluster) is None, "the crash-loop alert to resolve", 25)
    with cluster.client() as client:
        record = client.get("/api/v1/proxies/host-a", dict)
    types = [e["type"] for e in record["recent"]]
    assert types.count("alert_firing") == 1 and types[-1] == "alert_resolved", record["recent"]
    assert record["crash_loop"] is None
    assert "haproxy" not in cluster.cli("alerts")
