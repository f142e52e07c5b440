"""Traffic follows a rolling update, end to end: `treeherd up` (a manager, a local agent and the nginx
gateway) serves a node that has no port of its own from four task processes with an HTTP health check,
and a dependent service on the same host reaches them through its local haproxy. A start-first or a
stop-first update (parallelism 1) under steady load on both paths fails no request, and nginx never
even tries a task that is already gone (each old task leaves the proxies before it is stopped)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import TASK_JSON_SERVER, EdgeAndLocalLoad, requests_retried
from tests.e2e.test_up_gateway import nginx_masters
from tests.gateway.helpers import served_by
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

pytestmark = pytest.mark.e2e
HOST = "roll.test"


@pytest.mark.parametrize("order", ["start-first", "stop-first"])
def test_a_rolling_update_under_load_fails_no_request(tmp_path: Path, order: str) -> None:
    assert shutil.which("nginx"), "the test suite installs nginx (scripts/system-deps.sh)"
    data = tmp_path / "up"
    domain_port = free_port()
    task = {
        "command": [sys.executable, "-c", TASK_JSON_SERVER],
        "ports": [{"name": "http"}],
        "health": {"kind": "http", "path": "/", "interval_s": 0.2, "timeout_s": 1},
    }
    update = {"parallelism": 1, "order": order, "monitor_s": 0.5}
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            client.request("POST", "/api/v1/domains", {"name": HOST, "ports": [{"port": domain_port}]})
            client.request("POST", "/api/v1/nodes", {"path": "shop"})  # no port: tasks serve it
            client.request("POST", "/api/v1/nodes/shop/routes", {"domain": HOST, "uri": "/"})
            client.request(
                "POST",
                "/api/v1/services",
                {"name": "web", "node": "shop", "replicas": 4, "task": task, "update": update},
            )
            # A dependent service on the same host: its agent runs a haproxy with web's endpoints.
            client.request(
                "POST",
                "/api/v1/services",
                {
                    "name": "front",
                    "node": "shop",
                    "task": {"command": ["sleep", "1000"], "depends_on": [{"service": "web"}]},
                },
            )
            wait_for(
                lambda: (
                    {served_by(domain_port, "/", HOST) for _ in range(12)}
                    == {f"task-{n}" for n in range(1, 5)}
                ),
                "nginx to reach the four tasks",
                60,
            )
            local_port = client.get("/api/v1/services/web", dict)["service"]["local_port"]
            wait_for(lambda: served_by(local_port, "/", HOST), "the local haproxy to reach web", 30)
            started = time.time()
            with EdgeAndLocalLoad(domain_port, local_port, HOST, "v") as load:
                wait_for(lambda: sum(load.statuses.values()) > 50, "load to flow", 10)
                client.request("PATCH", "/api/v1/services/web", {"task": {**task, "env": {"V": "2"}}})
                wait_for(
                    lambda: (
                        (client.get("/api/v1/services/web", dict)["service"]["update_status"] or {}).get(
                            "state"
                        )
                        == "completed"
                    ),
                    "the update to complete",
                    90,
                )
                before = sum(load.seen.values())
                wait_for(lambda: sum(load.seen.values()) > before + 50, "more load after the update", 10)
            assert load.statuses[200] > 200 and set(load.statuses) == {200}, load.statuses
            assert load.local[200] > 200 and set(load.local) == {200}, load.local
            assert load.seen["1"] and load.seen["2"], load.seen
            tail = [served_by(domain_port, "/", HOST) for _ in range(8)]
            assert all(name is not None for name in tail)
            retried = requests_retried(data, HOST, started, sum(load.statuses.values()))
            assert not retried, retried[:5]
    finally:
        for process in nginx_masters(data / "gateway"):
            process.kill()
