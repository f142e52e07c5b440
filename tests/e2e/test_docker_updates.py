"""Rolling updates of docker services whose image has a HEALTHCHECK of its own, on the real dockerd: the
task runs "starting" until Docker's check passes, so a start-first update stops an old container only
after the new one is healthy (seen in dockerd's own events); an image whose check fails is a failed
slot, and the update pauses or rolls back as the service's failure action says."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Cluster, docker_cluster, docker_scope
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import TaskSpec, UpdatePolicy
from treeherd.testing.docker import Dockerd, image_with_healthcheck
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
IDLE = ["sh", "-c", "exec sleep 1000"]
# Ready three seconds after it starts: the image's check passes from then on.
SLOW = ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 1000"]


@pytest.fixture
def cluster(docker_host: str, tmp_path: Path) -> Iterator[Cluster]:
    with docker_cluster(tmp_path) as cluster:
        yield cluster


@contextlib.contextmanager
def image(dockerd: Dockerd, busybox: str, check: str, **options: int) -> Iterator[str]:
    built = image_with_healthcheck(dockerd, busybox, check, **options)
    try:
        yield built
    finally:
        dockerd.docker("rmi", "-f", "--no-prune", built, check=False)  # keeps the base image


def create(cluster: Cluster, name: str, spec: TaskSpec, policy: UpdatePolicy) -> None:
    with cluster.client() as client:
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name=name, node="corp", replicas=2, task=spec, update=policy, rollback=policy),
        )
    wait_for(lambda: len(cluster.running(name)) == 2, f"2 {name} tasks running", timeout_s=60)


def update(cluster: Cluster, name: str, spec: TaskSpec) -> None:
    with cluster.client() as client:
        client.request("PATCH", f"/api/v1/services/{name}", ServiceUpdate(task=spec))


def service(cluster: Cluster, name: str) -> dict[str, Any]:
    with cluster.client() as client:
        found: dict[str, Any] = client.get(f"/api/v1/services/{name}", dict)["service"]
        return found


def update_state(cluster: Cluster, name: str) -> str:
    status = service(cluster, name).get("update_status")
    return "" if status is None else str(status["state"])


def images_running(cluster: Cluster, name: str) -> dict[int, list[str]]:
    """The images of each slot's running tasks (sorted), from the store (via the API)."""
    found: dict[int, list[str]] = {}
    with cluster.client() as client:
        for row in cluster.running(name):
            detail = client.get(f"/api/v1/tasks/{row['id']}", dict)
            found.setdefault(row["slot"], []).append(detail["spec"]["image"])
    return {slot: sorted(images) for slot, images in found.items()}


def remove(cluster: Cluster, dockerd: Dockerd, *names: str) -> None:
    for name in names:
        cluster.cli("service", "rm", name)

    def left() -> bool:
        out = dockerd.docker("ps", "-aq", "--filter", f"label=treeherd.scope={docker_scope(cluster)}")
        return not out.split()

    wait_for(left, "no container left", timeout_s=30)


def test_a_start_first_update_stops_the_old_container_only_once_the_new_one_is_healthy(
    cluster: Cluster, dockerd: Dockerd, busybox: str
) -> None:
    policy = UpdatePolicy(parallelism=1, order="start-first", monitor_s=1)
    create(cluster, "web", TaskSpec(command=IDLE, image=busybox, stop_grace_s=1), policy)
    old = {row["slot"]: row["id"] for row in cluster.running("web")}
    with image(dockerd, busybox, "test -f /tmp/ready", start_period_s=30) as checked:
        # dockerd's own record of the update: containers starting, turning healthy, being stopped.
        events = subprocess.Popen(
            [
                "docker", "-H", dockerd.host, "events",
                "--filter", f"label=treeherd.scope={docker_scope(cluster)}",
                "--filter", "event=start", "--filter", "event=health_status", "--filter", "event=kill",
                "--format", "{{json .}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            update(cluster, "web", TaskSpec(command=SLOW, image=checked, stop_grace_s=1))
            starting: set[str] = set()

            def over() -> bool:
                rows = cluster.running("web")
                starting.update(r["id"] for r in rows if r["health"] == "starting")
                return update_state(cluster, "web") == "completed"

            wait_for(over, "the update completed", timeout_s=60)
        finally:
            events.terminate()
            output, _ = events.communicate(timeout=10)
        assert images_running(cluster, "web") == {1: [checked], 2: [checked]}
        assert all(row["health"] == "healthy" for row in cluster.running("web"))
        new = {row["slot"]: row["id"] for row in cluster.running("web")}
        assert set(new.values()) <= starting  # each ran "starting" a while, as the agent reported it

        seen: dict[tuple[str, str], float] = {}
        for line in output.decode().splitlines():
            event = json.loads(line)
            task = event["Actor"]["Attributes"].get("treeherd.task", "")
            seen.setdefault((task, event["Action"]), event["timeNano"] / 1e9)
        for slot in (1, 2):
            started = seen[(new[slot], "start")]
            healthy = seen[(new[slot], "health_status: healthy")]
            stopped = seen[(old[slot], "kill")]
            assert healthy - started >= 2.5, "the image's check passes only once the task is ready"
            assert stopped > healthy, (
                f"slot {slot}: the old container was stopped before the new one was healthy"
            )
        remove(cluster, dockerd, "web")


def test_an_image_whose_check_fails_pauses_or_rolls_back_the_update(
    cluster: Cluster, dockerd: Dockerd, busybox: str
) -> None:
    spec = TaskSpec(command=IDLE, image=busybox, stop_grace_s=1)
    create(cluster, "held", spec, UpdatePolicy(parallelism=1, order="start-first", monitor_s=1))
    rollback = UpdatePolicy(parallelism=1, monitor_s=1, failure_action="rollback")
    create(cluster, "undone", spec, rollback)
    with image(dockerd, busybox, "echo not ready; exit 1") as sick:
        bad = TaskSpec(command=IDLE, image=sick, stop_grace_s=1)
        update(cluster, "held", bad)
        update(cluster, "undone", bad)
        wait_for(
            lambda: update_state(cluster, "held") == "paused", "the start-first update paused", timeout_s=60
        )
        paused = service(cluster, "held")["update_status"]
        assert "slot 1 is unhealthy (image health check: not ready)" in paused["message"], paused
        assert paused["failed"] == ["1"]
        # Start-first: both old tasks serve on beside the unhealthy new one, and nothing more is replaced.
        assert images_running(cluster, "held") == {1: sorted([busybox, sick]), 2: [busybox]}
        wait_for(
            lambda: update_state(cluster, "undone") == "rollback_completed",
            "the stop-first update rolled back",
            timeout_s=60,
        )
        undone = service(cluster, "undone")
        assert undone["task"]["image"] == busybox and undone["previous_task"]["image"] == sick
        wait_for(
            lambda: images_running(cluster, "undone") == {1: [busybox], 2: [busybox]},
            "the old image back in both slots",
        )
        remove(cluster, dockerd, "held", "undone")
