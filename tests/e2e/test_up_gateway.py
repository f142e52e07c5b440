"""`treeherd up` with nginx installed runs the edge gateway too, on 127.0.0.1, and stops its nginx when
it stops."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.helpers import TASK_JSON_SERVER
from tests.gateway.helpers import Backend, route_one_backend, served_by
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

pytestmark = pytest.mark.e2e
HOST = "up.test"


def nginx_masters(prefix: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "nginx" in (process.info.get("name") or "") and str(prefix) in cmdline:
            found.append(process)
    return found


def test_up_serves_the_tree_through_its_gateway_and_stops_nginx(tmp_path: Path) -> None:
    assert shutil.which("nginx"), "the test suite installs nginx (scripts/system-deps.sh)"
    data = tmp_path / "up"
    domain_port, node_port = free_port(), free_port("127.0.0.7")
    backend = Backend(tmp_path, "web-7", "127.0.0.7", node_port)
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            route_one_backend(client, HOST, domain_port, node_port)
            wait_for(lambda: backend.ready(), "the backend to listen", 15)
            wait_for(lambda: served_by(domain_port, "/", HOST) == "web-7", "up's nginx to serve the tree", 30)
            assert nginx_masters(data / "gateway")
            # The gateway's logs and saved health state are its user's only.
            assert stat.S_IMODE((data / "gateway" / "logs").stat().st_mode) == 0o700
            state = data / "gateway" / "health-state.json"
            wait_for(state.exists, "the gateway to save its health state", 15)
            assert stat.S_IMODE(state.stat().st_mode) == 0o600
            # up's own agent and gateway hold the roles they need: nothing of theirs is refused.
            assert "refused" not in up.log(), up.log()
        wait_for(lambda: not nginx_masters(data / "gateway"), "nginx stopped with up", 15)
    finally:
        backend.stop()
        for process in nginx_masters(data / "gateway"):
            process.kill()


def test_up_without_the_gateway(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--no-gateway",)) as up:
        with Client(up.url) as client:
            assert client.get("/healthz", dict)
        assert not nginx_masters(tmp_path / "up" / "gateway")


def test_running_tasks_of_a_routed_node_are_its_backends(tmp_path: Path) -> None:
    data = tmp_path / "up"
    domain_port = free_port()
    task = {"command": [sys.executable, "-c", TASK_JSON_SERVER], "ports": [{"name": "http"}]}
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            client.request("POST", "/api/v1/domains", {"name": HOST, "ports": [{"port": domain_port}]})
            client.request("POST", "/api/v1/nodes", {"path": "shop", "port": 8080})
            client.request("POST", "/api/v1/nodes/shop/routes", {"domain": HOST, "uri": "/"})
            client.request(
                "POST", "/api/v1/services", {"name": "web", "node": "shop", "replicas": 2, "task": task}
            )
            # No machine is bound to the node: only the two running tasks (their endpoints) serve it.
            wait_for(
                lambda: {served_by(domain_port, "/", HOST) for _ in range(4)} == {"task-1", "task-2"},
                "nginx to reach both tasks",
                30,
            )
            client.request("PATCH", "/api/v1/services/web", {"replicas": 1})
            wait_for(
                lambda: {served_by(domain_port, "/", HOST) for _ in range(4)} == {"task-1"},
                "the stopped task out of nginx",
                30,
            )
    finally:
        for process in nginx_masters(data / "gateway"):
            process.kill()
