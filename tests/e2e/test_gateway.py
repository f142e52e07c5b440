"""The edge gateway end to end: a real manager, a real nginx in a temp prefix on loopback ports, and
real backend processes on 127.0.0.x addresses."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.gateway.helpers import (
    Backend,
    GatewayProcess,
    WebhookReceiver,
    get,
    served_by,
)
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

pytestmark = pytest.mark.e2e
HOST = "shop.test"


class Edge:
    """A tree with `/`, `/api` and `/api/v2` on one domain, their backends, and a gateway."""

    def __init__(self, tmp: Path, manager: ManagerProcess) -> None:
        self.tmp = tmp
        self.manager = manager
        self.client = Client(manager.url, timeout=10)
        self.port = free_port()
        self.backends: dict[str, Backend] = {}
        self.gateway: GatewayProcess | None = None

    def start(self) -> None:
        manager = self.manager
        tmp = self.tmp
        web_port, api_port, v2_port = free_port(), free_port(), free_port()
        c = self.client
        c.request("POST", "/api/v1/domains", {"name": HOST, "ports": [{"port": self.port}]})
        c.request("POST", "/api/v1/nodes", {"path": "shop"})
        c.request("POST", "/api/v1/nodes", {"path": "shop.web", "port": web_port})
        c.request("POST", "/api/v1/nodes", {"path": "shop.api", "port": api_port})
        c.request("POST", "/api/v1/nodes", {"path": "shop.api.v2", "port": v2_port})
        for path, uri in (("shop.web", "/"), ("shop.api", "/api"), ("shop.api.v2", "/api/v2")):
            c.request("POST", f"/api/v1/nodes/{path}/routes", {"domain": HOST, "uri": uri})
        for name, ip, port, node in (
            ("web-1", "127.0.0.2", web_port, "shop.web"),
            ("api-1", "127.0.0.3", api_port, "shop.api"),
            ("api-2", "127.0.0.4", api_port, "shop.api"),
            ("api-3", "127.0.0.5", api_port, "shop.api"),
            ("v2-1", "127.0.0.6", v2_port, "shop.api.v2"),
        ):
            c.request("POST", "/api/v1/machines", {"hostname": name, "ips": [ip]})
            c.request("POST", f"/api/v1/machines/{name}/bindings", {"node": node, "weight": 1})
            self.backends[name] = Backend(tmp, name, ip, port)
        wait_for(lambda: all(b.ready() for b in self.backends.values()), "the backends to listen", 15)
        self.gateway = GatewayProcess(manager.url, tmp / "nginx").start()
        wait_for(lambda: served_by(self.port, "/", HOST) == "web-1", "nginx to serve the tree", 30)
        # nginx serves before the gateway has recorded the start (and its digest) with the manager.
        wait_for(lambda: self.record().get("config_sha256"), "the live configuration to be recorded", 10)

    def record(self) -> dict[str, Any]:
        return dict(self.client.get("/api/v1/gateways/edge", dict))

    def events(self, type: str) -> list[dict[str, Any]]:
        return [e for e in self.record()["recent"] if e["type"] == type]

    def live_digest(self) -> str:
        return str(self.record()["config_sha256"])

    def bind(self, hostname: str, node: str, weight: int) -> None:
        self.client.request("POST", f"/api/v1/machines/{hostname}/bindings", {"node": node, "weight": weight})

    def close(self) -> None:
        try:
            if self.gateway is not None:
                self.gateway.stop()
        finally:
            if self.gateway is not None:
                self.gateway.stop_nginx()
            for backend in self.backends.values():
                backend.stop()
            self.client.close()


@pytest.fixture
def edge(tmp_path: Path, manager: ManagerProcess) -> Iterator[Edge]:
    built = Edge(tmp_path, manager)
    try:
        built.start()
        yield built
    finally:
        built.close()


def test_requests_land_on_the_longest_matching_uri(edge: Edge) -> None:
    assert served_by(edge.port, "/api/v2/items", HOST) == "v2-1"
    assert served_by(edge.port, "/api/v2", HOST) == "v2-1"
    assert served_by(edge.port, "/api/other", HOST) in {"api-1", "api-2", "api-3"}
    assert served_by(edge.port, "/apix", HOST) in {"api-1", "api-2", "api-3"}  # a prefix, as nginx has it
    assert served_by(edge.port, "/", HOST) == "web-1"
    assert served_by(edge.port, "/shop/cart", HOST) == "web-1"
    status, body = get(edge.port, "/api/v2", HOST)
    assert status == 200
    headers = body["headers"] if body else {}
    assert headers["host"] == HOST
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert get(edge.port, "/", "unknown.test")[0] == 404
    assert edge.events("started")


def test_weights_shift_traffic(edge: Edge) -> None:
    before = edge.live_digest()
    edge.bind("api-1", "shop.api", 1)
    edge.bind("api-2", "shop.api", 4)
    edge.bind("api-3", "shop.api", 0)
    live = edge.tmp / "nginx" / "rendered" / "current" / "treeherd.conf"
    wait_for(
        lambda: edge.live_digest() != before and "api-3: weight 0" in live.read_text(), "the new weights"
    )
    counts = collections.Counter(served_by(edge.port, "/api", HOST) for _ in range(50))
    assert counts["api-3"] == 0, counts  # weight 0 renders `down`
    assert counts["api-1"] + counts["api-2"] == 50
    assert 35 <= counts["api-2"] <= 45, counts  # 4 of every 5 with nginx's smooth weighted round robin


def test_a_configuration_nginx_refuses_never_replaces_the_live_one(edge: Edge, tmp_path: Path) -> None:
    live = edge.live_digest()
    ssl_port = free_port()
    # nginx -t fails: the certificate does not exist (the API checks paths, not files).
    edge.client.request(
        "POST",
        "/api/v1/domains",
        {
            "name": "broken.test",
            "ports": [{"port": ssl_port, "ssl": True}],
            "ssl_cert_path": str(tmp_path / "missing.pem"),
            "ssl_key_path": str(tmp_path / "missing.key"),
        },
    )
    rejected = wait_for(lambda: edge.events("rejected"), "the rejection to be recorded")
    assert "nginx -t refused" in rejected[-1]["reason"] and "missing.pem" in rejected[-1]["reason"]
    assert edge.live_digest() == live
    assert served_by(edge.port, "/api/v2", HOST) == "v2-1"
    # A later good change still goes live (the bad domain is removed again).
    edge.client.request("DELETE", "/api/v1/domains/broken.test")
    edge.bind("web-1", "shop.web", 2)
    wait_for(lambda: edge.live_digest() != live, "the next good configuration")


def test_a_reload_nginx_refuses_is_rolled_back(edge: Edge) -> None:
    live = edge.live_digest()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        # nginx -t does not bind ports, so only the reload finds the port taken.
        edge.client.request(
            "POST", "/api/v1/domains", {"name": "taken.test", "ports": [{"port": taken.getsockname()[1]}]}
        )
        rollback = wait_for(lambda: edge.events("rollback"), "the rollback to be recorded")
        assert "refused to reload" in rollback[-1]["reason"]
        assert "Address already in use" in rollback[-1]["reason"]
        assert edge.live_digest() == live
        assert served_by(edge.port, "/", HOST) == "web-1"
    finally:
        taken.close()


def test_failing_backend_alerts_is_ejected_and_returns(edge: Edge) -> None:
    hook = WebhookReceiver()
    try:
        edge.client.request(
            "PUT",
            "/api/v1/policies/shop.api",
            {
                "alert_below": 0.9,
                "alert_window": "1m",
                "alert_min_requests": 10,
                "webhook": hook.url,
                "eject_below": 0.8,
                "eject_window": "1m",
                "eject_min_requests": 5,
            },
        )
        edge.backends["api-1"].fail(True)
        statuses = collections.Counter(get(edge.port, "/api", HOST)[0] for _ in range(30))
        # Round robin over three backends, until api-1 is ejected (possibly during the burst).
        assert statuses[500] >= 5 and statuses[500] + statuses[200] == 30, statuses

        fired = wait_for(lambda: edge.events("alert_firing"), "the alert to fire")
        assert "shop.api" in fired[-1]["reason"]
        wait_for(lambda: any(h["state"] == "firing" for h in hook.received), "the webhook POST")
        ejected = wait_for(lambda: edge.events("ejected"), "api-1 to be ejected")
        figures = ejected[-1]["figures"]
        assert figures["availability"] == 0.0 and figures["requests"] >= 5 and figures["healthy_peers"] == 2
        assert "api-1" in ejected[-1]["reason"]
        # Only the ejected backend was failing: once it is down, every request succeeds on its peers.
        wait_for(
            lambda: any(e["at"] >= ejected[-1]["at"] for e in edge.events("reload")),
            "the reload after the ejection",
        )
        answers = [served_by(edge.port, "/api", HOST) for _ in range(20)]
        assert set(answers) <= {"api-2", "api-3"} and None not in answers
        availability = edge.client.request(
            "GET", "/api/v1/availability", query={"path": "shop.api"}, type=list
        )
        service = availability[0]["services"][0]
        assert service["path"] == "shop.api" and service["alert"]
        states = {b["hostname"]: b["state"] for b in service["backends"]}
        assert states["api-1"] == "ejected"

        edge.backends["api-1"].fail(False)
        restored = wait_for(lambda: edge.events("restored"), "api-1 to be probed back in")
        assert "api-1" in restored[-1]["reason"]
        wait_for(
            lambda: "api-1" in {served_by(edge.port, "/api", HOST) for _ in range(6)},
            "api-1 to take traffic again",
        )
        for _ in range(200):
            get(edge.port, "/api", HOST)
        wait_for(lambda: edge.events("alert_resolved"), "the alert to resolve")
        wait_for(lambda: any(h["state"] == "resolved" for h in hook.received), "the resolving webhook POST")
        metrics = _metrics(edge)
        assert 'treeherd_service_availability{gateway="edge",path="shop.api",window="1m"}' in metrics
    finally:
        hook.stop()


def test_one_of_two_backends_failing_is_ejected_by_the_default_policy(edge: Edge) -> None:
    # No policy anywhere: the root default ejects under 0.5 over 1 min with at least 20 requests, and
    # with two backends the cap still lets one go while its peer serves.
    assert edge.client.request("GET", "/api/v1/policies", type=list)[0]["id"] == "default"
    web_port = edge.backends["web-1"].port
    edge.client.request("POST", "/api/v1/machines", {"hostname": "web-2", "ips": ["127.0.0.7"]})
    edge.bind("web-2", "shop.web", 1)
    edge.backends["web-2"] = Backend(edge.tmp, "web-2", "127.0.0.7", web_port)
    wait_for(lambda: edge.backends["web-2"].ready(), "web-2 to listen")
    wait_for(lambda: "web-2" in {served_by(edge.port, "/", HOST) for _ in range(4)}, "web-2 to serve")
    edge.backends["web-2"].fail(True)
    statuses = collections.Counter(get(edge.port, "/", HOST)[0] for _ in range(60))
    assert statuses[500] >= 20 and statuses[500] + statuses[200] == 60, statuses

    ejected = wait_for(lambda: edge.events("ejected"), "web-2 to be ejected")
    assert "web-2" in ejected[-1]["reason"]
    figures = ejected[-1]["figures"]
    assert figures["availability"] < 0.5 and figures["requests"] >= 20  # it served before it failed
    assert figures["healthy_peers"] == 1 and figures["cap"] == 1
    wait_for(
        lambda: any(e["at"] >= ejected[-1]["at"] for e in edge.events("reload")),
        "the reload after the ejection",
    )
    assert [get(edge.port, "/", HOST)[0] for _ in range(20)] == [200] * 20
    states = edge.client.request("GET", "/api/v1/backends", type=list)
    assert [s["ejected"] for s in states] == [True]
    # The probes bring it back once it answers again.
    edge.backends["web-2"].fail(False)
    wait_for(lambda: edge.events("restored"), "web-2 to be probed back in")
    wait_for(
        lambda: "web-2" in {served_by(edge.port, "/", HOST) for _ in range(6)}, "web-2 to take traffic again"
    )


def _metrics(edge: Edge) -> str:
    import urllib.request

    with urllib.request.urlopen(edge.client.base_url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_hundred_reloads_under_load_fail_no_request(edge: Edge) -> None:
    stop = threading.Event()
    results: collections.Counter[str] = collections.Counter()

    def load() -> None:
        while not stop.is_set():
            try:
                status, _ = get(edge.port, "/api", HOST)
                results["ok" if status == 200 else f"status {status}"] += 1
            except OSError as error:
                results[f"error {error}"] += 1

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    reloads = 0
    try:
        for index in range(100):
            before = edge.live_digest()
            edge.bind("api-2", "shop.api", 1 + index % 2 + 1)
            wait_for(lambda before=before: edge.live_digest() != before, f"reload {index + 1}", 10)  # type: ignore[misc]
            reloads += 1
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert reloads == 100
    assert results["ok"] > 100
    assert set(results) == {"ok"}, results


def test_gateway_restart_adopts_nginx_and_keeps_counting(edge: Edge, manager: ManagerProcess) -> None:
    for _ in range(10):
        get(edge.port, "/api/v2", HOST)

    def requests_counted() -> int:
        reports = edge.client.request("GET", "/api/v1/availability", query={"path": "shop.api.v2"}, type=list)
        if not reports or not reports[0]["services"]:
            return 0
        return int(reports[0]["services"][0]["windows"]["1h"]["requests"])

    wait_for(lambda: requests_counted() == 10, "ten requests counted")
    pid = edge.gateway.nginx_pid()
    edge.gateway.stop()
    for _ in range(5):
        get(edge.port, "/api/v2", HOST)  # served while the gateway is away
    edge.gateway = GatewayProcess(manager.url, edge.tmp / "nginx").start()
    wait_for(lambda: requests_counted() == 15, "the five requests made while away, counted once")
    assert edge.gateway.nginx_pid() == pid
    time.sleep(0.5)
    assert requests_counted() == 15


def nginx_listeners(port: int) -> set[int]:
    """The pids of nginx processes in the OS listening on `port`."""
    found = set()
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "nginx":
            continue
        try:
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            found.add(process.pid)
    return found


def test_a_killed_nginx_master_is_replaced_on_the_current_configuration(edge: Edge) -> None:
    assert edge.gateway is not None
    old = edge.gateway.nginx_pid()
    assert old is not None
    old_workers = psutil.Process(old).children()
    assert old_workers and nginx_listeners(edge.port) >= {w.pid for w in old_workers}
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    edge.bind("api-3", "shop.api", 0)  # a change made after the kill: api-3 renders `down`
    live = edge.tmp / "nginx" / "rendered" / "current" / "treeherd.conf"

    def fresh_master_serves_the_change() -> int | None:
        assert edge.gateway is not None
        pid = edge.gateway.nginx_pid()
        if pid in (None, old) or "api-3: weight 0" not in live.read_text():
            return None
        return pid if served_by(edge.port, "/api", HOST) in {"api-1", "api-2"} else None

    new = wait_for(fresh_master_serves_the_change, "a fresh master on the change made after the kill", 5)
    recovered_s = time.monotonic() - killed
    assert recovered_s < 3.0, f"recovered in {recovered_s:.2f} s"
    assert not any(_alive(w) for w in old_workers), "a worker of the killed master still runs"
    new_group = {p.pid for p in psutil.process_iter() if _pgid(p.pid) == new}
    assert nginx_listeners(edge.port) <= new_group, "an nginx outside the new master's group holds the port"
    counts = collections.Counter(served_by(edge.port, "/api", HOST) for _ in range(20))
    assert counts["api-3"] == 0 and counts["api-1"] + counts["api-2"] == 20, counts
    restarted = [e for e in edge.events("started") if "proxy restarted" in e["reason"]]
    assert restarted and f"master pid {old} died" in restarted[-1]["reason"], edge.record()["recent"]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a dead worker re-parented to an init that reaps it later)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
