"""The control loop end to end: a real manager and real agent processes (hollow executor) on loopback.

Create, scale, update and remove a service; lose an agent (its tasks are replaced after the heartbeat
grace, and when it comes back its stale tasks are shut down); kill the manager mid-deploy (nothing is
lost, convergence resumes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Cluster, running_cluster
from treeherd.model.requests import ClusterUpdate, ServiceCreate, ServiceUpdate
from treeherd.model.services import TaskSpec
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
HOSTS = ("host-a", "host-b", "host-c")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        HOSTS,
        settings=ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, heartbeat_grace_multiplier=3),
    ) as cluster:
        yield cluster


def create(cluster: Cluster, name: str, replicas: int, **spec: Any) -> None:
    with cluster.client() as client:
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(
                name=name, node="corp", replicas=replicas, task=TaskSpec(command=["serve"], **spec)
            ),
        )


def slots_meant_to_run(tasks: list[dict[str, Any]]) -> Counter[int]:
    return Counter(t["slot"] for t in tasks if t["desired_state"] == "running")


def test_create_scale_update_remove(cluster: Cluster) -> None:
    create(cluster, "web", 6)
    running = wait_for(lambda: len(cluster.running("web")) == 6 and cluster.running("web"), "6 running")
    assert sorted(Counter(t["hostname"] for t in running).values()) == [2, 2, 2]  # spread
    with cluster.client() as client:
        client.request("PATCH", "/api/v1/services/web", ServiceUpdate(replicas=2))
    wait_for(
        lambda: (
            sorted(t["slot"] for t in cluster.running("web")) == [1, 2]
            and all(
                t["state"] == "shutdown" for t in cluster.tasks("web") if t["desired_state"] == "shutdown"
            )
        ),
        "scaled to 2, the others shut down by their agents",
    )
    with cluster.client() as client:
        client.request(
            "PATCH", "/api/v1/services/web", ServiceUpdate(task=TaskSpec(command=["serve"], env={"V": "2"}))
        )
    wait_for(
        lambda: sorted((t["slot"], t["spec_version"]) for t in cluster.running("web")) == [(1, 2), (2, 2)],
        "updated tasks running",
    )
    with cluster.client() as client:
        client.request("DELETE", "/api/v1/services/web")
        wait_for(lambda: not client.get("/api/v1/services", list), "the service removed")


def test_lost_agent_is_replaced_and_its_stale_tasks_stopped_on_return(cluster: Cluster) -> None:
    create(cluster, "api", 6, restart={"delay_s": 0})  # type: ignore[arg-type]
    wait_for(lambda: len(cluster.running("api")) == 6, "6 running")
    lost = [t["id"] for t in cluster.running("api") if t["hostname"] == "host-a"]
    assert lost
    cluster.agents["host-a"].kill()
    wait_for(lambda: cluster.nodes()["host-a"] == "down", "host-a marked down", timeout_s=15)
    wait_for(
        lambda: len([t for t in cluster.running("api") if t["hostname"] != "host-a"]) == 6,
        "6 running on the other agents",
    )
    assert all(slots_meant_to_run(cluster.tasks("api"))[s] == 1 for s in range(1, 7))
    cluster.start_agent("host-a")
    wait_for(lambda: cluster.nodes()["host-a"] == "ready", "host-a back")
    wait_for(
        lambda: all(t["state"] == "shutdown" for t in cluster.tasks("api") if t["id"] in lost),
        "host-a's stale tasks shut down",
    )
    final = cluster.running("api")
    assert sorted(t["slot"] for t in final) == [1, 2, 3, 4, 5, 6]  # one running task per slot
    assert not any(t["id"] in lost for t in final)


def test_manager_killed_mid_deploy_converges_after_restart(cluster: Cluster) -> None:
    create(cluster, "batch", 30)
    cluster.manager.kill()
    cluster.manager = ManagerProcess(cluster.manager.data_dir, listen=f"127.0.0.1:{cluster.port}").start()
    wait_for(lambda: len(cluster.running("batch")) == 30, "30 running after the restart", timeout_s=45)
    tasks = cluster.tasks("batch")
    assert slots_meant_to_run(tasks) == Counter(range(1, 31))  # every slot once, none twice
    assert len({t["id"] for t in tasks}) == len(tasks)
