"""The docker executor end to end: a real manager and an agent with `--executor docker` on the real
dockerd, tasks in containers of a busybox image imported at test time.

What runs is checked against dockerd itself (`docker ps`, `docker inspect`) and over loopback (each
container serves HTTP on its allocated host port): replicas answer, limits are Docker's own, a process
killed inside a container or a container removed from outside is replaced, a restarted agent adopts
its containers, `service rm` leaves none; bad input is said clearly and leaves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Cluster, docker_cluster, docker_scope, try_call
from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.requests import ServiceCreate
from treeherd.model.services import PortSpec, Resources, RestartPolicy, TaskSpec
from treeherd.testing.docker import Dockerd, image_with_healthcheck
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024
# Each task serves its own id over HTTP on its allocated host port (host network, loopback only).
SERVE = (
    "dir=/tmp/www/$TREEHERD_TASK_ID && mkdir -p $dir && echo $TREEHERD_TASK_ID > $dir/index.html"
    ' && echo "serving $TREEHERD_TASK_ID" && exec httpd -f -p 127.0.0.1:$TREEHERD_PORT_HTTP -h $dir'
)


@pytest.fixture
def cluster(docker_host: str, tmp_path: Path) -> Iterator[Cluster]:
    with docker_cluster(tmp_path) as cluster:
        yield cluster


def containers(dockerd: Dockerd, cluster: Cluster) -> dict[str, str]:
    """Task id → container id of the agent's containers (running or not)."""
    out = dockerd.docker(
        "ps",
        "-a",
        "--filter",
        f"label=treeherd.scope={docker_scope(cluster)}",
        "--format",
        '{{.ID}} {{.Label "treeherd.task"}}',
    )
    return {task: container for container, task in (line.split() for line in out.splitlines())}


def inspect(dockerd: Dockerd, container: str) -> dict[str, Any]:
    return dict(json.loads(dockerd.docker("inspect", container))[0])


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
        return response.read().decode().strip()


def answering(cluster: Cluster, service: str, count: int) -> dict[str, int] | None:
    """Task id → port of `count` running tasks that each answer with their own id (else None)."""
    running = {t["id"]: t["ports"]["http"] for t in cluster.running(service)}
    if len(running) != count:
        return None
    ok = all(try_call(get, port) == task_id for task_id, port in running.items())
    return running if ok else None


def create(cluster: Cluster, name: str, replicas: int, spec: TaskSpec) -> None:
    with cluster.client() as client:
        client.request(
            "POST", "/api/v1/services", ServiceCreate(name=name, node="corp", replicas=replicas, task=spec)
        )


def test_replicas_run_in_containers_and_are_replaced_adopted_and_removed(
    cluster: Cluster, dockerd: Dockerd, busybox: str
) -> None:
    spec = TaskSpec(
        command=["sh", "-c", SERVE],
        image=busybox,
        ports=[PortSpec(name="http")],
        resources=Resources(limit_memory=64 * MIB, limit_cpus=0.5),
        restart=RestartPolicy(delay_s=0),
        stop_grace_s=1.0,
        health=HealthCheck(
            kind="cmd", command=["sh", "-c", "test -f /tmp/www/$TREEHERD_TASK_ID/index.html"], interval_s=0.2
        ),
    )
    create(cluster, "web", 3, spec)
    tasks = wait_for(lambda: answering(cluster, "web", 3), "3 web containers answering", timeout_s=60)
    assert set(containers(dockerd, cluster)) == set(tasks)

    # Docker's own limits, and the labels that name the task.
    for task_id, container in containers(dockerd, cluster).items():
        info = inspect(dockerd, container)
        assert (info["HostConfig"]["Memory"], info["HostConfig"]["NanoCpus"]) == (64 * MIB, 500_000_000)
        assert info["Config"]["Labels"]["treeherd.task"] == task_id
        assert info["Config"]["Labels"]["treeherd.service"] == "web"
    # The health check runs in the container (docker exec); logs come from Docker's log API.
    wait_for(lambda: all(t["health"] == "healthy" for t in cluster.running("web")), "3 healthy tasks")
    some = next(iter(tasks))
    assert f"serving {some}" in cluster.cli("task", "logs", some)

    # kill -9 of a container's process: the task fails and its slot gets a new container.
    victim = next(iter(tasks))
    os.kill(inspect(dockerd, containers(dockerd, cluster)[victim])["State"]["Pid"], signal.SIGKILL)
    after_kill = wait_for(
        lambda: (found := answering(cluster, "web", 3)) and victim not in found and found, "a replacement"
    )
    failed = next(t for t in cluster.tasks("web") if t["id"] == victim)
    assert failed["state"] == "failed" and "SIGKILL" in failed["error"]

    # docker rm -f from outside: the same.
    removed = next(iter(after_kill))
    dockerd.docker("rm", "-f", containers(dockerd, cluster)[removed])
    after_rm = wait_for(
        lambda: (found := answering(cluster, "web", 3)) and removed not in found and found, "a replacement"
    )

    # The agent dies (SIGKILL) and comes back: it adopts the running containers, starts none.
    before = {task: container for task, container in containers(dockerd, cluster).items() if task in after_rm}
    cluster.agents["host-a"].kill()
    cluster.start_agent("host-a")
    wait_for(lambda: cluster.nodes() == {"host-a": "ready"}, "the agent back")
    assert wait_for(lambda: answering(cluster, "web", 3), "the same 3 tasks") == after_rm
    assert {task: c for task, c in containers(dockerd, cluster).items() if task in after_rm} == before

    # service rm: no container of it is left.
    cluster.cli("service", "rm", "web")
    wait_for(lambda: not containers(dockerd, cluster), "no container left", timeout_s=30)


def test_bad_input_is_said_and_leaves_nothing(cluster: Cluster, dockerd: Dockerd, busybox: str) -> None:
    malformed = cluster.cli(
        "service", "create", "bad", "--node", "corp", "--image", "Bad//Ref", "--", "true", check=False
    )
    assert malformed.returncode != 0
    assert "'Bad//Ref' is not an image reference" in malformed.stderr

    create(
        cluster,
        "absent",
        1,
        TaskSpec(command=["true"], image="local/absent:1", restart=RestartPolicy(condition="none")),
    )
    rejected = wait_for(
        lambda: [t for t in cluster.tasks("absent") if t["state"] == "rejected"], "the task rejected"
    )
    assert "image local/absent:1 is not on host-a: docker load it there" in rejected[0]["error"]

    create(
        cluster,
        "nouser",
        1,
        TaskSpec(command=["true"], image=busybox, user="nosuch", restart=RestartPolicy(condition="none")),
    )
    failed = wait_for(
        lambda: [t for t in cluster.tasks("nouser") if t["state"] == "failed"], "the task failed"
    )
    assert "unable to find user nosuch" in failed[0]["error"]

    for name in ("absent", "nouser"):
        cluster.cli("service", "rm", name)
    wait_for(lambda: not containers(dockerd, cluster), "no container left", timeout_s=30)


def test_a_container_reaches_its_dependency_through_the_local_haproxy(
    cluster: Cluster, dockerd: Dockerd, busybox: str
) -> None:
    api = TaskSpec(
        command=["sh", "-c", SERVE],
        image=busybox,
        ports=[PortSpec(name="http")],
        health=HealthCheck(kind="http", interval_s=0.2, timeout_s=1.0, retries=1),
    )
    # The app asks for api at TREEHERD_DEP_API (127.0.0.1:LOCALPORT, the host's haproxy) from inside its
    # container, once a second, and prints what it got.
    ask = 'while true; do echo "got $(wget -qO- http://$TREEHERD_DEP_API/)"; sleep 0.5; done'
    app = TaskSpec(command=["sh", "-c", ask], image=busybox, depends_on=[Dependency(service="api")])
    create(cluster, "api", 2, api)
    create(cluster, "app", 1, app)
    api_ids = set(wait_for(lambda: answering(cluster, "api", 2), "2 api containers answering", timeout_s=60))
    app_id = wait_for(lambda: [t["id"] for t in cluster.running("app")], "the app running")[0]

    def answers_seen() -> set[str]:
        lines = cluster.cli("task", "logs", app_id).splitlines()
        return {line.removeprefix("got ") for line in lines if line.startswith("got ")} & api_ids

    assert wait_for(
        lambda: answers_seen() == api_ids, "the app's requests reaching both api tasks", timeout_s=30
    )


def endpoints(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    with cluster.client() as client:
        return client.get(f"/api/v1/endpoints/{name}", list)


def test_the_images_own_healthcheck_is_the_tasks_health(
    cluster: Cluster, dockerd: Dockerd, busybox: str
) -> None:
    # The image checks that its task has written /tmp/ok; the service has no treeherd check.
    image = image_with_healthcheck(dockerd, busybox, "test -f /tmp/ok || (echo no /tmp/ok; exit 1)")
    try:
        spec = TaskSpec(
            command=["sh", "-c", SERVE], image=image, ports=[PortSpec(name="http")], stop_grace_s=0
        )
        create(cluster, "checked", 1, spec)
        sick = wait_for(
            lambda: [t for t in cluster.running("checked") if t["health"] == "unhealthy"],
            "the task unhealthy by its image's check",
            timeout_s=60,
        )[0]
        assert "image health check: no /tmp/ok" in cluster.cli("service", "ps", "checked")
        assert endpoints(cluster, "checked") == []  # not healthy: not an endpoint
        dockerd.docker("exec", containers(dockerd, cluster)[sick["id"]], "touch", "/tmp/ok")
        wait_for(lambda: [t["health"] for t in cluster.running("checked")] == ["healthy"], "the task healthy")
        registered = wait_for(lambda: endpoints(cluster, "checked"), "the healthy task an endpoint")
        assert [e["task_id"] for e in registered] == [sick["id"]]
        cluster.cli("service", "rm", "checked")
        wait_for(lambda: not containers(dockerd, cluster), "no container left", timeout_s=30)
    finally:
        dockerd.docker("rmi", "--no-prune", image, check=False)  # keeps the base image
