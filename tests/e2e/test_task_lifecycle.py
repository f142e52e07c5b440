"""A task's life at its edges, end to end with real processes: the output of a failed task stays
readable for as long as the task is in its service's history, a task whose host port another process
holds is rejected with who holds it, and `treeherd up` stops what it started."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import Cluster, running_cluster, try_call
from tests.e2e.test_processes import answer, live, one_each, server
from treeherd.core.tasks.allocate import PORT_RANGE
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import RestartPolicy, TaskSpec
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

HISTORY = 2
# Fails at once, saying why on its last line, as a server whose port is taken does.
FAILING = "import os, sys; print('starting', flush=True); print('cannot listen: address in use', os.environ['TREEHERD_TASK_ID'], flush=True); sys.exit(1)"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        ("host-a",),
        settings=ClusterUpdate(heartbeat_period_s=0.5, task_history=HISTORY),
        executor="process",
    ) as cluster:
        yield cluster


def create(cluster: Cluster, name: str, command: list[str], **spec: Any) -> None:
    with cluster.client() as client:
        client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name=name, node="corp", replicas=1, task=TaskSpec(command=command, **spec)),
        )


def test_a_failed_tasks_output_stays_readable_while_it_is_in_the_history(cluster: Cluster) -> None:
    create(
        cluster,
        "flaky",
        [sys.executable, "-c", FAILING],
        restart=RestartPolicy(delay_s=0, max_attempts=HISTORY + 2, window_s=600),
    )
    # Every attempt fails; the first ones leave the history (HISTORY finished tasks per slot).
    wait_for(
        lambda: (
            sum(t["state"] == "failed" for t in cluster.tasks("flaky")) >= HISTORY
            and not any(t["desired_state"] == "running" for t in cluster.tasks("flaky"))
        ),
        "every attempt failed",
    )
    tasks = cluster.tasks("flaky")
    assert len(tasks) == HISTORY
    for task in tasks:
        # The reason is in the status, and the whole output in the logs, after the task was let go.
        assert f"cannot listen: address in use {task['id']}" in task["error"]
        logs = cluster.cli("task", "logs", task["id"])
        assert logs.splitlines()[-2:] == ["starting", f"cannot listen: address in use {task['id']}"]
    ps = cluster.cli("service", "ps", "flaky")
    assert all(
        f"exit code 1: cannot listen: address in use {t['id']}" in ps.replace("exited with code 1: ", "")
        for t in tasks
    )
    # Only the output of tasks still in the history is kept.
    kept = cluster.tmp / "host-a" / "kept-logs"
    wait_for(lambda: len(list(kept.iterdir())) == HISTORY, f"{HISTORY} kept outputs")
    assert sorted(p.name for p in kept.iterdir()) == sorted(t["id"] for t in tasks)


def _up(tmp: Path, *args: str) -> tuple[ManagerProcess, Cluster]:
    up = ManagerProcess(tmp / "up", command=("up",), extra_args=("--no-gateway", *args)).start()
    return up, Cluster(tmp, url=up.url)


def _pids(cluster: Cluster) -> set[int]:
    return {process.pid for processes in live(cluster, "web").values() for process in processes}


def _alive(pids: set[int]) -> set[int]:
    """Which of `pids` still run (a zombie waiting for its parent to reap it has ended)."""
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_up_stops_its_tasks_unless_told_to_leave_them_for_the_next_up(tmp_path: Path) -> None:
    up, cluster = _up(tmp_path)
    try:
        with cluster.client() as client:
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
        server(cluster, "web", 2)
        wait_for(lambda: one_each(cluster, "web", 2), "2 task processes")
        pids = _pids(cluster)
        assert up.stop() == 0
        # A clean stop stopped the tasks' processes (by the time `up` exited).
        assert not _alive(pids)

        up, cluster = _up(tmp_path, "--live-restore")
        wait_for(lambda: one_each(cluster, "web", 2) and len(cluster.running("web")) == 2, "2 new tasks")
        pids = _pids(cluster)
        assert up.stop() == 0
        assert _alive(pids) == pids
        assert "left 2 tasks running: the next `treeherd up` adopts them" in up.log()

        # The next `up` adopts them: the same processes, no new ones; its clean stop ends them.
        up, cluster = _up(tmp_path)
        wait_for(lambda: up.log().count("treeherd.agent.session: session") == 3, "the agent's third session")
        wait_for(lambda: len(cluster.running("web")) == 2, "2 running")
        assert _pids(cluster) == pids
        assert up.stop() == 0
        assert not _alive(pids)
    finally:
        up.kill()


def test_a_task_whose_host_port_is_taken_is_rejected_naming_the_holder(cluster: Cluster) -> None:
    # A fresh manager hands out the range's first port first: hold it, as a stray process would.
    first = PORT_RANGE[0]
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the agent's check does: a connection of an earlier test in TIME_WAIT on the port must not keep
    # this test from holding it (the check rightly sees such a port as free).
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            holder.bind(("127.0.0.1", first))
            holder.listen()
            mine = True
        except OSError:  # something else on this machine holds it already: it is taken all the same
            mine = False
        server(cluster, "web", 1)
        running = wait_for(lambda: cluster.running("web"), "a task running on a free port")
        assert running[0]["ports"]["http"] != first
        rejected = [t for t in cluster.tasks("web") if t["state"] == "rejected"]
        assert rejected and rejected[0]["ports"]["http"] == first
        reason = rejected[0]["error"]
        assert reason.startswith(f"port {first} is in use on host-a ")
        if mine:  # the agent runs as our user (or root), so it can name the holder: this test
            assert reason.startswith(f"port {first} is in use on host-a (pid {os.getpid()}, ")
        port = running[0]["ports"]["http"]
        wait_for(lambda: try_call(answer, port), "the task answering on its port")
    finally:
        holder.close()
