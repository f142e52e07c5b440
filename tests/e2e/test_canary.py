"""Canary releases end to end: `treeherd up` (a manager, a local agent and the nginx gateway) serves a
node from four task processes with an HTTP health check, under steady load through nginx. The canary
is judged on what the gateway measured from its own access log:
- a healthy canary on one task takes about a quarter of the requests, shows up per version in
  `treeherd availability`, and `service promote` rolls the rest: every slot on the new spec;
- a healthy canary with auto-promote promotes itself once its window has passed;
- a canary whose new version answers 500 to a fifth of its requests is aborted by itself: the old spec
  is back on its slot, and the service's event carries the figures.
No request fails but those the broken canary answered itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import TASK_JSON_SERVER
from tests.e2e.test_up_gateway import nginx_masters
from tests.gateway.helpers import get, served_by
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client, ClientError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
HOST = "canary.test"
SERVICE = "/api/v1/services/web"


class Load:
    """Steady requests through nginx, counted by status and by the version that answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port, "/", HOST)
            except OSError:
                status, body = 0, None
            self.statuses[status] += 1
            if body:
                self.versions[(body["v"], status)] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def total(self) -> int:
        return sum(self.statuses.values())


def status_of(client: Client) -> dict[str, Any]:
    return client.get(SERVICE, dict)["service"]["update_status"] or {}


OVER = {"completed", "paused", "rollback_completed", "rollback_paused"}


def wait_state(client: Client, wanted: str, what: str, timeout_s: float) -> dict[str, Any]:
    """Wait for the service's update to reach `wanted`; fail at once, with the status and the tasks,
    if it ends in another state."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal seen
        seen = status_of(client)
        if seen.get("state") in OVER - {wanted}:
            raise AssertionError(f"{what}: the update ended {seen['state']}: {seen}{diagnose(client)}")
        return seen.get("state") == wanted

    try:
        wait_for(reached, what, timeout_s)
    except AssertionError as error:
        if "the update ended" in str(error):
            raise
        raise AssertionError(f"{error}; status: {seen}{diagnose(client)}") from None
    return seen


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*treeherd_command(), "--manager", url, *args], capture_output=True, text=True, timeout=120
    )


def on_version(client: Client, version: str, spec_versions: set[int] | None = None) -> bool:
    """Four running tasks, all of the service's spec (with $V = `version`): its spec version, or one of
    `spec_versions` (after a rollback, the old tasks keep their version: equal specs)."""
    tasks = client.get(f"{SERVICE}/tasks", list, all="false")
    service = client.get(SERVICE, dict)["service"]
    wanted = spec_versions or {service["spec_version"]}
    return (
        len(tasks) == 4
        and all(t["state"] == "running" and t["spec_version"] in wanted for t in tasks)
        and service["task"]["env"].get("V") == version
    )


def test_canaries_under_load_are_promoted_or_aborted_on_the_gateways_figures(tmp_path: Path) -> None:
    assert shutil.which("nginx"), "the test suite installs nginx (scripts/system-deps.sh)"
    data = tmp_path / "up"
    domain_port = free_port()
    task = {
        "command": [sys.executable, "-c", TASK_JSON_SERVER],
        "ports": [{"name": "http"}],
        "health": {"kind": "http", "path": "/health", "interval_s": 0.2, "timeout_s": 1},
        "env": {"V": "1"},
    }
    update = {"parallelism": 1, "order": "start-first", "monitor_s": 0.5}
    judged = {"window_s": 8, "min_requests": 40}
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            client.request("POST", "/api/v1/domains", {"name": HOST, "ports": [{"port": domain_port}]})
            client.request("POST", "/api/v1/nodes", {"path": "shop"})
            client.request("POST", "/api/v1/nodes/shop/routes", {"domain": HOST, "uri": "/"})
            client.request(
                "POST",
                "/api/v1/services",
                {
                    "name": "web",
                    "node": "shop",
                    "replicas": 4,
                    "task": task,
                    "update": update,
                    "rollback": update,
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
            with Load(domain_port) as load:
                wait_for(lambda: load.total() > 50, "load to flow", 10)

                # 1. A healthy canary on one task, promoted by hand.
                run = cli(
                    up.url, "service", "update", "web", "--env", "V=2", "--canary", "1",
                    "--canary-window", "8s", "--canary-min-requests", "40", "--follow",
                )  # fmt: skip
                assert run.returncode == 0, run.stdout + run.stderr
                assert "canary of 1 of 4 tasks, about 25% of the requests" in run.stdout, run.stdout
                assert "canary on 1 of 4 slots (spec 2)" in run.stdout, run.stdout
                old_before, new_before = load.versions[("1", 200)], load.versions[("2", 200)]
                wait_for(lambda: load.versions[("2", 200)] > new_before + 60, "the canary to serve", 30)
                new_share = load.versions[("2", 200)] - new_before
                old_share = load.versions[("1", 200)] - old_before
                share = new_share / (new_share + old_share)
                assert 0.1 < share < 0.45, (new_share, old_share)  # one backend of four, equal weights

                def canary_row() -> dict[str, Any] | None:
                    for report in client.get("/api/v1/availability", list):
                        for service in report["services"]:
                            for version in service["versions"]:
                                if version["canary"] and version["windows"].get("canary", {}).get("requests"):
                                    return dict(version)
                    return None

                wait_for(lambda: canary_row() is not None, "the gateway to report the canary's figures", 30)
                row = canary_row()
                assert row is not None and row["spec_version"] == 2 and row["backends"] == 1
                shown = cli(up.url, "availability", "--window", "canary")
                assert shown.returncode == 0 and "web spec 2 (1 tasks)" in shown.stdout, shown.stdout
                assert "web spec 1 (3 tasks)" in shown.stdout, shown.stdout
                assert status_of(client)["state"] == "canary", status_of(client)
                promote = cli(up.url, "service", "promote", "web", "--follow")
                assert promote.returncode == 0, promote.stdout + promote.stderr + diagnose(client)
                assert on_version(client, "2")
                assert status_of(client)["canary"]["verdict"] == "promoted: by hand"

                # 2. A healthy canary that promotes itself once its window has passed.
                client.request(
                    "PATCH",
                    SERVICE,
                    {
                        "task": {**task, "env": {"V": "3"}},
                        "canary": {"tasks": 1, **judged, "auto_promote": True},
                    },
                )
                wait_state(client, "completed", "the canary to promote itself", 90)
                assert on_version(client, "3")
                verdict = status_of(client)["canary"]["verdict"]
                assert verdict.startswith("promoted: automatically, passed: canary (spec 3)"), verdict
                assert status_of(client)["canary"]["new"]["requests"] >= 40
                failed_before = sum(n for status, n in load.statuses.items() if status != 200)
                assert failed_before == 0, load.statuses

                # 3. A canary answering 500 to a fifth of its requests is aborted by itself.
                tap = EventTap(up.url, since=client.get(SERVICE, dict)["service"]["version"])
                client.request(
                    "PATCH",
                    SERVICE,
                    {
                        "task": {**task, "env": {"V": "4", "FAIL_EVERY": "5"}},
                        "canary": {"tasks": 1, **judged},
                    },
                )
                wait_state(
                    client,
                    "rollback_completed",
                    "the broken canary to be aborted and its slot back on the old spec",
                    90,
                )
                status = status_of(client)
                assert status["message"] == "canary abort completed", status
                canary = status["canary"]
                assert canary["verdict"].startswith("aborted: availability "), canary
                assert canary["new"]["spec_version"] == 4 and canary["new"]["errors"] > 0, canary
                assert 0.6 < canary["new"]["availability"] < 0.9 and canary["old"]["availability"] == 1.0, (
                    canary
                )
                wait_for(lambda: on_version(client, "3", {3, 5}), "every slot back on the old spec", 30)
                wait_for(lambda: tap.aborted, "the abort's event", 10)
                assert "canary (spec 4):" in tap.aborted[0] and "old (spec 3):" in tap.aborted[0], tap.aborted
            # Only the broken canary's own answers failed, and only while it served.
            failures = {status: n for status, n in load.statuses.items() if status != 200}
            assert set(failures) <= {500}, load.statuses
            assert failures.get(500, 0) == load.versions[("4", 500)], (load.statuses, load.versions)
    finally:
        for process in nginx_masters(data / "gateway"):
            process.kill()


def diagnose(client: Client) -> str:
    """What the service's tasks say, for a failure message: the failed ones' output."""
    lines = []
    for task in client.get(f"{SERVICE}/tasks", list):
        lines.append(
            f"{task['id']} slot {task['slot']} spec {task['spec_version']} {task['state']} {task['error']}"
        )
        if task["state"] == "failed":
            try:
                with Client(client.base_url, timeout=10) as logs:
                    text = b"".join(logs.stream_bytes(f"/api/v1/tasks/{task['id']}/logs", read_timeout=10))
                lines.append(text.decode(errors="replace")[-2000:])
            except ClientError as error:
                lines.append(f"(no logs: {error})")
    for report in client.get("/api/v1/availability", list):
        for service in report["services"]:
            for version in service["versions"]:
                lines.append(f"gateway {report['gateway']} (stale: {report['stale']}): {json.dumps(version)}")
    return "\n" + "\n".join(lines)


class EventTap:
    """Follows the service events after revision `since`, keeping the message of the one that aborts a
    canary."""

    def __init__(self, url: str, since: int) -> None:
        self.aborted: list[str] = []
        self._client = Client(url)
        self._since = since
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        query = {"since": self._since, "kind": ["service"]}
        try:
            for kind, data, _ in self._client.stream("/api/v1/events", query, read_timeout=60):
                if kind != "updated":
                    continue
                status = json.loads(data)["object"].get("update_status") or {}
                if status.get("state") == "rollback_started" and status["message"].startswith(
                    "canary aborted"
                ):
                    self.aborted.append(status["message"])
                    return
        except ClientError:
            return  # the manager stopped
        finally:
            self._client.close()
