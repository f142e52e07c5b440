"""Traffic follows a scale-down, end to end: `treeherd up` (a manager, a local agent and the nginx
gateway) serves a node that has no port of its own from four task processes with an HTTP health check,
and a dependent service on the same host reaches them through its local haproxy. Scaling to two under
steady load on both paths fails no request, and nginx never even tries a task that is already gone: each
task of a slot scaled away leaves the proxies before it is stopped (drained for the cluster's
`drain_delay_s`), as a task replaced by an update does."""

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
HOST = "shrink.test"


def test_a_scale_down_under_load_fails_no_request(tmp_path: Path) -> None:
    assert shutil.which("nginx"), "the test suite installs nginx (scripts/system-deps.sh)"
    data = tmp_path / "up"
    domain_port = free_port()
    task = {
        "command": [sys.executable, "-c", TASK_JSON_SERVER],
        "ports": [{"name": "http"}],
        "health": {"kind": "http", "path": "/", "interval_s": 0.2, "timeout_s": 1},
    }
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            client.request("POST", "/api/v1/domains", {"name": HOST, "ports": [{"port": domain_port}]})
            client.request("POST", "/api/v1/nodes", {"path": "shop"})  # no port: tasks serve it
            client.request("POST", "/api/v1/nodes/shop/routes", {"domain": HOST, "uri": "/"})
            client.request(
                "POST", "/api/v1/services", {"name": "web", "node": "shop", "replicas": 4, "task": task}
            )
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
            with EdgeAndLocalLoad(domain_port, local_port, HOST, "name") as load:
                wait_for(lambda: sum(load.statuses.values()) > 50, "load to flow", 10)
                client.request("PATCH", "/api/v1/services/web", {"replicas": 2})

                def scaled() -> bool:
                    rows = client.get("/api/v1/services/web/tasks", list, all=True)
                    away = [r for r in rows if r["slot"] > 2]
                    return bool(away) and all(r["state"] == "shutdown" for r in away)

                wait_for(scaled, "the tasks of slots 3 and 4 to stop", 30)
                assert len(client.get("/api/v1/endpoints/web", list)) == 2
                before = sum(load.statuses.values())
                wait_for(
                    lambda: sum(load.statuses.values()) > before + 50, "more load after the scale-down", 10
                )
            assert load.statuses[200] > 100 and set(load.statuses) == {200}, load.statuses
            assert load.local[200] > 100 and set(load.local) == {200}, load.local
            # Slots 3 and 4 served until they were drained.
            assert load.seen["task-3"] and load.seen["task-4"], load.seen
            tail = {served_by(domain_port, "/", HOST) for _ in range(8)}
            assert tail == {"task-1", "task-2"}, tail
            retried = requests_retried(data, HOST, started, sum(load.statuses.values()))
            assert not retried, retried[:5]
    finally:
        for process in nginx_masters(data / "gateway"):
            process.kill()
