"""Real work end to end: a real manager and three agents with the process executor on loopback.

Every check of what runs is made against the OS process table (psutil), not only the store: a slot must
never have two live processes, and what the store says stopped must really be gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import TASK_HTTP_SERVER, Cluster, process_env, running_cluster, try_call
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import PortSpec, Resources, RestartPolicy, TaskSpec
from treeherd.testing.processes import ManagerProcess, processes_under
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
HOSTS = ("host-a", "host-b", "host-c")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        HOSTS,
        settings=ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, heartbeat_grace_multiplier=3),
        executor="process",
    ) as cluster:
        yield cluster


def create(cluster: Cluster, name: str, replicas: int, command: list[str], **spec: Any) -> None:
    with cluster.client() as client:
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name=name, node="corp", replicas=replicas, task=TaskSpec(command=command, **spec)),
        )


def server(cluster: Cluster, name: str, replicas: int, **spec: Any) -> None:
    spec.setdefault("restart", RestartPolicy(delay_s=0))
    create(
        cluster,
        name,
        replicas,
        [sys.executable, "-c", TASK_HTTP_SERVER],
        ports=[PortSpec(name="http")],
        **spec,
    )


def live(cluster: Cluster, service: str) -> dict[int, list[psutil.Process]]:
    """The service's live task processes on this machine by slot, from the OS process table."""
    by_slot: dict[int, list[psutil.Process]] = {}
    for process in processes_under(cluster.tmp):
        env = process_env(process)
        try:
            if env.get("TREEHERD_SERVICE") != service or process.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        by_slot.setdefault(int(env["TREEHERD_SLOT"]), []).append(process)
    return by_slot


def one_each(cluster: Cluster, service: str, slots: int) -> bool:
    found = live(cluster, service)
    return sorted(found) == list(range(1, slots + 1)) and all(len(p) == 1 for p in found.values())


def answer(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.read().decode()


def task_of_slot(cluster: Cluster, service: str, slot: int) -> dict[str, Any]:
    (task,) = [t for t in cluster.running(service) if t["slot"] == slot]
    return task


def test_replicas_run_spread_answer_scale_log_and_go(cluster: Cluster) -> None:
    server(cluster, "web", 5)
    running = wait_for(lambda: len(cluster.running("web")) == 5 and cluster.running("web"), "5 running")
    assert sorted(Counter(t["hostname"] for t in running).values()) == [1, 2, 2]  # spread
    wait_for(lambda: one_each(cluster, "web", 5), "5 processes, one per slot")
    for task in running:
        port = task["ports"]["http"]
        assert (
            wait_for(lambda port=port: try_call(answer, port), f"port {port}")
            == f"{task['id']} {task['slot']}"
        )

    logs = cluster.cli("service", "logs", "web")
    for task in running:
        assert f"web.{task['slot']}@{task['hostname']} | serving web slot {task['slot']} on" in logs
    one = running[0]
    assert f"serving web slot {one['slot']} on {one['ports']['http']}" in cluster.cli(
        "task", "logs", one["id"]
    )

    with cluster.client() as client:
        client.request("PATCH", "/api/v1/services/web", ServiceUpdate(replicas=2))
    wait_for(lambda: one_each(cluster, "web", 2), "the extra processes gone")
    with cluster.client() as client:
        client.request("DELETE", "/api/v1/services/web")
        wait_for(lambda: not client.get("/api/v1/services", list), "the service removed")
    wait_for(lambda: not live(cluster, "web"), "no process left")


def test_a_killed_task_is_restarted_per_policy(cluster: Cluster) -> None:
    server(cluster, "any", 1)
    server(cluster, "never", 1, restart=RestartPolicy(condition="none"))
    server(cluster, "twice", 1, restart=RestartPolicy(delay_s=0, max_attempts=2, window_s=300))
    for name in ("any", "never", "twice"):
        wait_for(lambda name=name: one_each(cluster, name, 1), f"{name} running")

    first = live(cluster, "any")[1][0].pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: [t["state"] for t in cluster.tasks("any") if t["desired_state"] == "shutdown"], "FAILED")
    failed = next(t for t in cluster.tasks("any") if t["desired_state"] == "shutdown")
    assert failed["state"] == "failed" and "signal 9" in failed["message"] + failed.get("error", "")
    wait_for(lambda: one_each(cluster, "any", 1) and live(cluster, "any")[1][0].pid != first, "a new process")

    os.kill(live(cluster, "never")[1][0].pid, signal.SIGKILL)
    wait_for(lambda: not live(cluster, "never"), "never: gone")
    wait_for(
        lambda: [t["state"] for t in cluster.tasks("never")] == ["failed"], "never: failed, not replaced"
    )

    for attempt in range(3):
        wait_for(lambda: one_each(cluster, "twice", 1), f"twice: running before kill {attempt + 1}")
        os.kill(live(cluster, "twice")[1][0].pid, signal.SIGKILL)
        wait_for(lambda a=attempt: not live(cluster, "twice") or _restarted(cluster, a), "twice: reacted")
    wait_for(lambda: sum(t["state"] == "failed" for t in cluster.tasks("twice")) == 3, "three failures")
    assert len(cluster.tasks("twice")) == 3  # the first run and two restarts, no third
    assert not live(cluster, "twice")
    assert cluster.running("never") == []


def _restarted(cluster: Cluster, attempt: int) -> bool:
    return len(cluster.tasks("twice")) > attempt + 1


def test_lost_agent_is_replaced_then_its_processes_are_stopped_or_adopted(cluster: Cluster) -> None:
    server(cluster, "api", 6)
    wait_for(lambda: len(cluster.running("api")) == 6 and one_each(cluster, "api", 6), "6 running")

    # An agent restart within the grace: its processes are adopted, nothing is started twice. (A
    # longer grace for this part, so a slow agent start on a busy machine still comes back in time.)
    heartbeats(cluster, 3.0)
    before = {slot: procs[0].pid for slot, procs in live(cluster, "api").items()}
    cluster.agents["host-b"].kill()
    cluster.start_agent("host-b")
    wait_for(lambda: cluster.nodes()["host-b"] == "ready", "host-b back")
    assert {slot: procs[0].pid for slot, procs in live(cluster, "api").items()} == before
    assert len(cluster.running("api")) == 6
    heartbeats(cluster, 0.5)

    # An agent gone past the grace: its tasks run elsewhere; back, it stops its old processes.
    lost = {t["slot"] for t in cluster.running("api") if t["hostname"] == "host-a"}
    assert lost
    cluster.agents["host-a"].kill()
    wait_for(lambda: cluster.nodes()["host-a"] == "down", "host-a marked down", timeout_s=15)
    wait_for(
        lambda: len([t for t in cluster.running("api") if t["hostname"] != "host-a"]) == 6,
        "6 running on the other agents",
    )
    # Meanwhile the lost agent's processes still run (nobody stopped them): two per slot, briefly.
    assert all(len(live(cluster, "api")[slot]) == 2 for slot in lost)
    cluster.start_agent("host-a")
    wait_for(lambda: one_each(cluster, "api", 6), "one process per slot again")
    assert len(cluster.running("api")) == 6


def test_a_service_that_waits_never_runs_a_slot_twice_while_its_agent_is_frozen(cluster: Cluster) -> None:
    server(cluster, "db", 3)
    wait_for(lambda: len(cluster.running("db")) == 3 and one_each(cluster, "db", 3), "3 running")
    cluster.cli("service", "update", "db", "--on-node-down", "wait", "--detach")
    ids = sorted(t["id"] for t in cluster.running("db"))
    frozen = cluster.agents["host-a"].process
    assert frozen is not None
    on_frozen = [t["slot"] for t in cluster.running("db") if t["hostname"] == "host-a"]
    assert on_frozen  # spread over three hosts: one slot each
    os.kill(frozen.pid, signal.SIGSTOP)  # its tasks keep running; only the agent stops answering
    try:
        wait_for(lambda: cluster.nodes()["host-a"] == "down", "host-a marked down", timeout_s=15)
        time.sleep(2.0)  # several orchestrator passes with host-a down
        assert one_each(cluster, "db", 3)  # one process per slot in the OS: nothing started elsewhere
        assert sorted(t["id"] for t in cluster.tasks("db") if t["desired_state"] == "running") == ids
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_for(lambda: cluster.nodes()["host-a"] == "ready", "host-a back", timeout_s=15)
    wait_for(lambda: len(cluster.running("db")) == 3, "3 running")
    assert sorted(t["id"] for t in cluster.running("db")) == ids  # the same tasks ran on
    assert one_each(cluster, "db", 3)


def heartbeats(cluster: Cluster, period_s: float) -> None:
    """Set the heartbeat period and wait until every agent has been told (its next heartbeat's ack)."""
    with cluster.client() as client:
        settings = client.get("/api/v1/cluster", dict)
        previous = settings["heartbeat_period_s"]
        client.request("PATCH", "/api/v1/cluster", ClusterUpdate(heartbeat_period_s=period_s))
    time.sleep(previous + 0.5)


def test_up_killed_mid_deploy_leaves_one_process_per_slot_and_none_after_rm(tmp_path: Path) -> None:
    # `up` runs the manager and the agent in one process: kill -9 ends both in the same instant,
    # while the agent is starting processes. Counted in the OS, not in the store.
    replicas = 150
    up = ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--no-gateway",)).start()
    view = Cluster(tmp_path, url=up.url)
    try:
        with view.client() as client:
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
        create(view, "batch", replicas, ["sleep", "600"], restart=RestartPolicy(delay_s=0))
        # Killed up to three times while it starts processes, so that a kill is likely to fall between
        # starting one and recording it (the unit tests of spawn cover that instant deterministically).
        started = [0]
        for _ in range(3):
            seen = started[-1]
            count = wait_for(lambda seen=seen: _count(view, "batch", seen), "more processes", poll_s=0.005)
            up.kill()
            started.append(count)
            up = ManagerProcess(
                up.data_dir, command=("up",), listen=f"127.0.0.1:{view.port}", extra_args=("--no-gateway",)
            ).start()
            if count >= replicas:
                break
        wait_for(lambda: len(view.running("batch")) == replicas, f"{replicas} running again", timeout_s=90)
        wait_for(lambda: one_each(view, "batch", replicas), "one process per slot", timeout_s=30)
        by_slot = live(view, "batch")
        assert sum(len(processes) for processes in by_slot.values()) == replicas, (
            f"processes seen at the kills: {started[1:]}"
        )

        node = json.loads(view.cli("node", "inspect", socket.gethostname()))
        limits = node["agent"]["limits"]
        assert limits["cgroups"] in ("v1", "hybrid", "v2", "none")
        assert limits["task_tree"] in ("cgroup v2", "process group")

        # A strict CPU limit: runs where the host enforces CPU limits, else is rejected with the reason.
        view.cli(
            "service",
            "create",
            "strict",
            "--node",
            "corp",
            "--limit-cpu",
            "0.1",
            "--limits",
            "strict",
            "--",
            "sleep",
            "600",
        )
        expected = "running" if limits["cpu"] else "rejected"
        wait_for(lambda: [t["state"] for t in view.tasks("strict")][:1] == [expected], f"strict: {expected}")
        if not limits["cpu"]:
            assert (
                "strict limits cannot be enforced here: CPU limit not enforced"
                in view.tasks("strict")[0]["error"]
            )

        assert "removing batch" in view.cli("service", "rm", "batch", "strict")
        wait_for(lambda: not live(view, "batch"), "no process left after service rm", timeout_s=60)
    finally:
        up.kill()


def _count(view: Cluster, service: str, more_than: int) -> int:
    """How many processes of the service run, if more than `more_than` (else 0)."""
    count = sum(len(processes) for processes in live(view, service).values())
    return count if count > more_than else 0


def test_a_task_over_its_memory_limit_is_reported_out_of_memory(cluster: Cluster) -> None:
    hog = "import time; blocks = [bytearray(1 << 20) for _ in range(200)]; time.sleep(60)"
    create(
        cluster,
        "hog",
        1,
        [sys.executable, "-c", hog],
        resources=Resources(limit_memory=50 << 20),
        restart=RestartPolicy(condition="none"),
    )
    wait_for(lambda: [t["state"] for t in cluster.tasks("hog")] == ["failed"], "the hog failed")
    (task,) = cluster.tasks("hog")
    assert "out of memory" in task["message"] + task.get("error", "")
    assert not live(cluster, "hog")


def test_bad_commands_are_refused_or_rejected_with_the_reason(cluster: Cluster) -> None:
    env_error = cluster.cli(
        "service", "create", "bad", "--node", "corp", "--env", "NOEQUALS", "--", "x", check=False
    )
    assert env_error.returncode != 0 and "NOEQUALS" in env_error.stderr
    grace = cluster.cli(
        "service", "create", "bad", "--node", "corp", "--stop-grace-period", "-1s", "--", "x", check=False
    )
    assert grace.returncode != 0
    create(cluster, "missing", 1, ["/nonexistent/program"], restart=RestartPolicy(condition="none"))
    create(
        cluster, "nowhere", 1, ["true"], workdir="/nonexistent/dir", restart=RestartPolicy(condition="none")
    )
    for name, reason in (("missing", "/nonexistent/program"), ("nowhere", "/nonexistent/dir")):
        wait_for(
            lambda name=name: [t["state"] for t in cluster.tasks(name)] == ["rejected"], f"{name} rejected"
        )
        (task,) = cluster.tasks(name)
        assert reason in task["message"] + task.get("error", "")
    with cluster.client() as client:
        names = [s["service"]["name"] for s in client.get("/api/v1/services", list)]
    assert "bad" not in names


def test_up_runs_the_demo_as_real_processes(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "up", command=("up",), extra_args=("--demo",)) as up:
        cluster_view = Cluster(tmp_path, url=up.url)  # for its queries
        running = wait_for(
            lambda: len(cluster_view.running("frontend")) == 2 and cluster_view.running("frontend"),
            "2 running",
        )
        for task in running:
            port = task["ports"]["http"]
            assert wait_for(lambda port=port: try_call(_status, port), f"port {port}") == 200
        assert len(live(cluster_view, "frontend")) == 2


def _status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return int(response.status)
