"""Rolling updates end to end: a real manager, two agents with the process executor, and the real
`treeherd` command. A bad version stops at its first batch while the old tasks keep running (checked in
the OS process table), then rolls itself back; a good one reaches every slot, and `service rollback`
brings the old one back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import Cluster, process_env, running_cluster
from treeherd.model.requests import ClusterUpdate
from treeherd.testing.processes import processes_under
from treeherd.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
HOSTS = ("host-a", "host-b")
OLD = ["sh", "-c", "exec sleep 1000"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path,
        HOSTS,
        settings=ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, heartbeat_grace_multiplier=3),
        executor="process",
    ) as cluster:
        yield cluster


def service(cluster: Cluster) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.cli("service", "inspect", "web"))["service"]
    return found


def status(cluster: Cluster) -> str:
    update = service(cluster)["update_status"]
    return "" if update is None else str(update["state"])


def running_commands(cluster: Cluster) -> dict[int, list[str]]:
    """The command of each slot's running task, from the store (via the API)."""
    with cluster.client() as client:
        tasks = client.get("/api/v1/services/web/tasks", list)
    by_id = {}
    for row in tasks:
        if row["desired_state"] == "running" and row["state"] == "running":
            with cluster.client() as client:
                by_id[row["slot"]] = client.get(f"/api/v1/tasks/{row['id']}", dict)["spec"]["command"]
    return by_id


def live_processes(cluster: Cluster) -> dict[int, list[psutil.Process]]:
    """The service's live task processes by slot, from the OS process table."""
    found: dict[int, list[psutil.Process]] = {}
    for process in processes_under(cluster.tmp):
        env = process_env(process)
        try:
            if env.get("TREEHERD_SERVICE") != "web" or process.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        found.setdefault(int(env["TREEHERD_SLOT"]), []).append(process)
    return found


def start_web(cluster: Cluster, *policy: str) -> None:
    cluster.cli(
        "service",
        "create",
        "web",
        "--node",
        "corp",
        "--replicas",
        "4",
        "--update-monitor",
        "1s",
        "--rollback-monitor",
        "1s",
        *policy,
        "--",
        *OLD,
    )
    wait_for(lambda: running_commands(cluster) == dict.fromkeys(range(1, 5), OLD), "4 old tasks running")


def test_a_failing_update_pauses_after_its_first_batch_then_rolls_itself_back(cluster: Cluster) -> None:
    start_web(cluster)
    # --follow: what an operator at a terminal sees, and an exit status that says how it ended.
    followed = cluster.cli("service", "update", "web", "--follow", "--", "sh", "-c", "exit 1", check=False)
    assert "tasks will be replaced: 1 at a time, stop-first, on failure pause" in followed.stdout
    assert "web.1" in followed.stdout and "spec 2" in followed.stdout
    assert followed.returncode == 1 and "update paused: task" in followed.stderr, followed
    assert status(cluster) == "paused"
    paused = service(cluster)["update_status"]
    assert "task" in paused["message"] and "slot 1 ended (failed, exit code 1)" in paused["message"]
    assert paused["failed"] == ["1"]
    # The other three slots were never touched: their old tasks run on, as processes too.
    assert {slot: cmd for slot, cmd in running_commands(cluster).items() if slot != 1} == dict.fromkeys(
        (2, 3, 4), OLD
    )
    processes = live_processes(cluster)
    assert all(len(processes.get(slot, [])) == 1 for slot in (2, 3, 4)), processes
    assert "UPDATE: paused" in cluster.cli("service", "ps", "web")

    # An update of the paused service resumes it; with the failure action rollback, the next failure
    # brings the old spec back by itself.
    resumed = cluster.cli(
        "service", "update", "web", "--update-failure-action", "rollback", "--follow", check=False
    )
    assert resumed.returncode == 1 and "update rollback_completed: rollback completed" in resumed.stderr, (
        resumed
    )
    assert status(cluster) == "rollback_completed"
    rolled = service(cluster)
    assert rolled["task"]["command"] == OLD and rolled["previous_task"]["command"] == ["sh", "-c", "exit 1"]
    assert rolled["update_status"]["completed_at"] >= rolled["update_status"]["started_at"]
    wait_for(lambda: running_commands(cluster) == dict.fromkeys(range(1, 5), OLD), "4 old tasks running")
    wait_for(
        lambda: (
            sorted(live_processes(cluster)) == [1, 2, 3, 4]
            and all(len(p) == 1 for p in live_processes(cluster).values())
        ),
        "one process per slot",
    )


def test_a_good_update_reaches_every_slot_and_rollback_returns(cluster: Cluster) -> None:
    start_web(cluster, "--update-parallelism", "2")
    out = cluster.cli("service", "update", "web", "--env", "V=2", "--follow")
    assert "web: converged, 4 tasks running spec 2 (update completed)" in out
    assert status(cluster) == "completed"
    with cluster.client() as client:
        rows = client.get("/api/v1/services/web/tasks", list, all=False)
    assert sorted(r["slot"] for r in rows if r["state"] == "running") == [1, 2, 3, 4]
    assert {r["spec_version"] for r in rows} == {2}
    wait_for(
        lambda: (
            all(len(p) == 1 and process_env(p[0]).get("V") == "2" for p in live_processes(cluster).values())
            and len(live_processes(cluster)) == 4
        ),
        "4 processes of the new spec",
    )

    out = cluster.cli("service", "rollback", "web", "--follow")
    assert "rolling back web" in out and "web: converged, 4 tasks running spec 3 (rollback completed)" in out
    assert status(cluster) == "rollback_completed"
    wait_for(
        lambda: (
            all(len(p) == 1 and "V" not in process_env(p[0]) for p in live_processes(cluster).values())
            and len(live_processes(cluster)) == 4
        ),
        "4 processes of the old spec",
    )
    again = cluster.cli("service", "rollback", "web", check=False)
    assert again.returncode == 0  # the spec swapped back is the previous one now: rolling forward works


def test_rollback_with_nothing_to_return_to_is_refused(cluster: Cluster) -> None:
    start_web(cluster)
    result = cluster.cli("service", "rollback", "web", check=False)
    assert result.returncode != 0 and "no previous spec to roll back to" in result.stderr
    bad = cluster.cli("service", "update", "web", "--update-max-failure-ratio", "2", check=False)
    assert bad.returncode != 0 and "update.max_failure_ratio" in bad.stderr
    assert service(cluster)["update"]["max_failure_ratio"] == 0
