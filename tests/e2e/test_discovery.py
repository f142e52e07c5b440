"""Discovery end to end: a real manager and agents running real processes with health checks;
endpoints registered by the agents, external registrations with a TTL, expiry of a frozen agent's."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import TASK_HTTP_SERVER, Cluster, running_cluster
from treeherd.model.discovery import HealthCheck
from treeherd.model.requests import ClusterUpdate, ServiceCreate, ServiceUpdate
from treeherd.model.services import PortSpec, RestartPolicy, TaskSpec
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
HOSTS = ("host-a", "host-b")
TTL_S = 3.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        HOSTS,
        settings=ClusterUpdate(
            heartbeat_period_s=0.5,
            heartbeat_epsilon_s=0.1,
            heartbeat_grace_multiplier=3,
            endpoint_ttl_s=TTL_S,
        ),
        executor="process",
    ) as cluster:
        yield cluster


def endpoints(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    with cluster.client() as client:
        return client.get(f"/api/v1/endpoints/{name}", list)


def create(cluster: Cluster, name: str, replicas: int, sick: Path, **health: Any) -> None:
    spec = TaskSpec(
        command=[sys.executable, "-c", TASK_HTTP_SERVER],
        env={"SICK": str(sick)},
        ports=[PortSpec(name="http")],
        restart=RestartPolicy(delay_s=0),
        health=HealthCheck(kind="http", path="/", interval_s=0.2, timeout_s=1.0, retries=2, **health),
    )
    with cluster.client() as client:
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name=name, node="corp", replicas=replicas, task=spec)
        )


def test_healthy_tasks_are_endpoints_and_leave_when_unhealthy_or_stopped(
    cluster: Cluster, tmp_path: Path
) -> None:
    sick = tmp_path / "sick"
    create(cluster, "api", 2, sick)
    found = wait_for(lambda: len(endpoints(cluster, "api")) == 2 and endpoints(cluster, "api"), "2 endpoints")
    # Statuses are batched, endpoint sets are not: the API may show the endpoints first.
    wait_for(lambda: len(cluster.running("api")) == 2, "2 running")
    tasks = {t["id"]: t for t in cluster.running("api")}
    assert {(e["address"], e["port"]) for e in found} == {
        ("127.0.0.1", t["ports"]["http"]) for t in tasks.values()
    }
    assert all(e["source"] == "task" and e["task_id"] in tasks for e in found)
    # The health is a status report (batched), the endpoint set a message of its own: either may land first.
    wait_for(lambda: [t["health"] for t in cluster.running("api")] == ["healthy", "healthy"], "healthy in ps")
    assert "running (healthy)" in cluster.cli("service", "ps", "api")
    with cluster.client() as client:
        registry = client.get("/api/v1/services-registry/api", list)
    assert sorted(r["port"] for r in registry) == sorted(e["port"] for e in found)
    assert all(r["ipv4_addr"] == "127.0.0.1" for r in registry)

    sick.touch()  # every instance now answers 500: unhealthy, no endpoint, but still running
    wait_for(lambda: endpoints(cluster, "api") == [], "no endpoint while unhealthy", timeout_s=10)
    wait_for(lambda: [t["health"] for t in cluster.running("api")] == ["unhealthy"] * 2, "unhealthy, running")
    sick.unlink()
    wait_for(lambda: len(endpoints(cluster, "api")) == 2, "back when healthy again", timeout_s=10)

    with cluster.client() as client:
        client.request("PATCH", "/api/v1/services/api", ServiceUpdate(replicas=1))
    wait_for(lambda: len(endpoints(cluster, "api")) == 1, "a stopped task's endpoint removed", timeout_s=10)


def test_unhealthy_task_is_restarted_with_health_restart(cluster: Cluster, tmp_path: Path) -> None:
    sick = tmp_path / "sick-restart"
    create(cluster, "job", 1, sick, restart=True)
    wait_for(lambda: len(endpoints(cluster, "job")) == 1, "healthy")
    first = cluster.running("job")[0]["id"]
    sick.touch()
    wait_for(
        lambda: any(t["id"] == first and t["state"] == "failed" for t in cluster.tasks("job")),
        "failed as unhealthy",
    )
    failed = next(t for t in cluster.tasks("job") if t["id"] == first)
    assert "unhealthy" in failed["error"] + failed["message"]


def test_frozen_agent_registrations_expire_and_return(cluster: Cluster, tmp_path: Path) -> None:
    create(cluster, "web", 2, tmp_path / "never")
    wait_for(lambda: len(endpoints(cluster, "web")) == 2, "2 endpoints")
    # Keep every node alive through the freeze so only the TTL is at work: a long heartbeat grace.
    with cluster.client() as client:
        client.request("PATCH", "/api/v1/cluster", ClusterUpdate(heartbeat_period_s=5.0))
    time.sleep(1.0)
    frozen = cluster.agents["host-a"].process
    assert frozen is not None
    assert [e["host"] for e in endpoints(cluster, "web")].count("host-a") == 1  # spread: one each
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        wait_for(
            lambda: not any(e["host"] == "host-a" for e in endpoints(cluster, "web")),
            "host-a's expired",
            timeout_s=15,
        )
        expired_after = time.monotonic() - started
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert expired_after >= TTL_S - 1.5  # not before its lease could have run out
    wait_for(lambda: len(endpoints(cluster, "web")) == 2, "host-a's back after it resumed", timeout_s=15)


def test_external_registration_lives_while_refreshed(cluster: Cluster) -> None:
    cluster.cli("endpoints", "register", "db", "--addr", "127.0.0.9:5432", "--ttl", "2s", "--host", "db-1")
    listed = cluster.cli("endpoints", "db")
    assert "127.0.0.9" in listed and "5432" in listed and "external" in listed
    for _ in range(3):  # refreshed every second: it stays
        time.sleep(1.0)
        cluster.cli(
            "endpoints", "register", "db", "--addr", "127.0.0.9:5432", "--ttl", "2s", "--host", "db-1"
        )
        assert len(endpoints(cluster, "db")) == 1
    wait_for(lambda: endpoints(cluster, "db") == [], "expired after its TTL", timeout_s=10)
    cluster.cli("endpoints", "register", "db", "--addr", "127.0.0.9:5432", "--ttl", "30s")
    cluster.cli("endpoints", "deregister", "db", "--addr", "127.0.0.9:5432")
    assert endpoints(cluster, "db") == []
    bad = cluster.cli("endpoints", "register", "db", "--addr", "not-an-ip:1", check=False)
    assert bad.returncode != 0 and "not an IP address" in bad.stderr
    zero = cluster.cli(
        "service",
        "create",
        "z",
        "--node",
        "corp",
        "--port",
        "http",
        "--health-tcp",
        "--health-interval",
        "0s",
        "--",
        "true",
        check=False,
    )
    assert zero.returncode != 0 and "interval" in zero.stderr


def test_a_task_requiring_a_service_waits_for_its_endpoint(cluster: Cluster) -> None:
    missing = cluster.cli(
        "service", "create", "x", "--node", "corp", "--requires", "nope", "--", "true", check=False
    )
    assert missing.returncode != 0 and "nope" in missing.stderr  # an unknown dependency
    with cluster.client() as client:
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name="db", node="corp", replicas=0, task=TaskSpec(command=["true"])),
        )
        spec = TaskSpec(command=["sleep", "60"], requires=["db"])
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name="app", node="corp", replicas=1, task=spec)
        )
    wait_for(
        lambda: (
            [(t["state"], t["message"]) for t in cluster.tasks("app")]
            == [("new", "waiting for required services without an endpoint: db")]
        ),
        "app held",
    )
    time.sleep(1.0)
    assert cluster.running("app") == []
    cluster.cli("endpoints", "register", "db", "--addr", "127.0.0.1:5432", "--ttl", "60s")
    wait_for(lambda: len(cluster.running("app")) == 1, "app running once db has an endpoint")
