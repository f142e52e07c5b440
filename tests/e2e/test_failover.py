"""Three managers on one etcd, on loopback: one leader, followers that serve reads and forward writes,
and a leader killed with SIGKILL during a deploy of real processes: a new leader takes over, agents
follow it, and every slot ends up running exactly once (counted in the OS process table)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import process_env
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import RestartPolicy, TaskSpec
from treeherd.testing.etcd import EtcdCluster, EtcdProcess, etcd_binary
from treeherd.testing.processes import AgentProcess, ManagerProcess, processes_under, treeherd_command
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client, ClientError

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"),
]
ELECTION_S = 5.0  # a new leader within this long of the old one's death
REPLICAS = 20


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    with EtcdProcess(tmp_path / "etcd") as server:
        yield server


@contextlib.contextmanager
def three_managers(tmp_path: Path, store: str) -> Iterator[list[ManagerProcess]]:
    started = [ManagerProcess(tmp_path / f"manager-{i}", extra_args=("--store", store)) for i in range(3)]
    try:
        for manager in started:
            manager.start()
        yield started
    finally:
        for manager in started:
            manager.kill()


@pytest.fixture
def managers(tmp_path: Path, etcd: EtcdProcess) -> Iterator[list[ManagerProcess]]:
    with three_managers(tmp_path, etcd.url("/cluster")) as started:
        yield started


class NodeStates:
    """Every agent state the managers showed, sampled in a thread while the context is open."""

    def __init__(self, urls: str) -> None:
        self.urls = urls
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NodeStates:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with Client(self.urls, timeout=2) as client:
                    machines = client.get("/api/v1/machines", list, agents=True)
            except Exception:
                continue
            self.seen.update(m["agent"]["state"] for m in machines if m.get("agent"))


def listing(url: str) -> list[dict[str, Any]]:
    with Client(url, timeout=5) as client:
        return client.get("/api/v1/managers", list)


def leader_of(managers: list[ManagerProcess]) -> ManagerProcess | None:
    """The manager every live manager names as the leader, once they agree."""
    named = set()
    for manager in managers:
        if manager.process is None or manager.process.poll() is not None:
            continue
        try:
            named.add(next((m["url"] for m in listing(manager.url) if m["role"] == "leader"), None))
        except Exception:
            return None
    if len(named) != 1 or None in named:
        return None
    (url,) = named
    return next((m for m in managers if m.url == url), None)


def test_one_leader_followers_forward_writes_and_a_killed_leader_is_replaced(
    managers: list[ManagerProcess],
) -> None:
    leader = wait_for(lambda: leader_of(managers), "the managers agree on one leader")
    follower = next(m for m in managers if m is not leader)
    listed = listing(follower.url)
    assert sorted(m["url"] for m in listed) == sorted(m.url for m in managers)
    assert sorted(m["role"] for m in listed) == ["follower", "follower", "leader"]
    assert all(m["revision"] is not None and m["lag"] is not None for m in listed)
    # A write sent to a follower is forwarded to the leader; the follower's reads say their revision.
    with Client(follower.url, timeout=10) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    with urllib.request.urlopen(follower.url + "/api/v1/nodes", timeout=5) as answer:
        revision = int(answer.headers["X-Treeherd-Revision"])
        assert "corp" in answer.read().decode()
    assert revision > 0
    shown = _cli(follower.url, "manager", "ls")
    assert "leader" in shown and "follower" in shown and leader.url in shown
    # The leader dies: another one is elected, and writes go through again.
    leader.kill()
    killed = time.monotonic()
    rest = [m for m in managers if m is not leader]
    new_leader = wait_for(lambda: leader_of(rest), "a new leader", timeout_s=ELECTION_S + 5)
    assert time.monotonic() - killed < ELECTION_S + 1
    with Client(",".join(m.url for m in rest), timeout=10) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp.web"))
    assert new_leader in rest


def _cli(url: str, *args: str) -> str:
    result = subprocess.run(
        [*treeherd_command(), "--manager", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def live_slots(root: Path, service: str) -> dict[int, int]:
    """How many live processes each slot of the service has, from the OS process table."""
    counts: dict[int, int] = {}
    for process in processes_under(root):
        env = process_env(process)
        if env.get("TREEHERD_SERVICE") == service:
            slot = int(env["TREEHERD_SLOT"])
            counts[slot] = counts.get(slot, 0) + 1
    return counts


def test_killing_the_leader_during_a_deploy_loses_and_doubles_no_task(tmp_path: Path) -> None:
    """On a 3-member etcd: kill -9 the leader manager during a deploy of real processes, then an etcd
    member: a new leader within ELECTION_S, no node marked down, every slot running exactly once."""
    with EtcdCluster(tmp_path / "etcd") as etcd, three_managers(tmp_path, etcd.url("/cluster")) as managers:
        leader = wait_for(lambda: leader_of(managers), "the managers agree on one leader")
        urls = ",".join(m.url for m in managers)
        with Client(urls, timeout=10) as client:
            client.request(
                "PATCH",
                "/api/v1/cluster",
                ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, heartbeat_grace_multiplier=3),
            )
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
        hosts = ("host-a", "host-b", "host-c")
        agents = [AgentProcess(urls, tmp_path / host, host, executor="process").start() for host in hosts]
        try:
            wait_for(lambda: _ready(urls) == len(hosts), "three ready agents")
            with NodeStates(urls) as states:
                with Client(urls, timeout=10) as client:
                    client.request(
                        "POST",
                        "/api/v1/services",
                        ServiceCreate(
                            name="work",
                            node="corp",
                            replicas=REPLICAS,
                            task=TaskSpec(
                                command=[sys.executable, "-c", HELLO_THEN_SLEEP],
                                restart=RestartPolicy(delay_s=0),
                            ),
                        ),
                    )
                wait_for(lambda: _running(urls, "work", any_state=True) > 0, "the deploy under way")
                leader.kill()
                killed = time.monotonic()
                at_kill = sum(live_slots(tmp_path, "work").values())
                rest = [m for m in managers if m is not leader]
                wait_for(lambda: leader_of(rest), "a new leader", timeout_s=ELECTION_S + 5)
                assert time.monotonic() - killed < ELECTION_S + 1
                wanted = dict.fromkeys(range(1, REPLICAS + 1), 1)
                wait_for(lambda: live_slots(tmp_path, "work") == wanted, "one process per slot", timeout_s=60)
                wait_for(lambda: _running(urls, "work") == REPLICAS, "every task running in the store")
                # An etcd member dies: nothing visible.
                etcd.members[0].kill()
                wait_for(lambda: _refused_write(urls, "corp.after") is None, "a write", timeout_s=15)
                time.sleep(3.0)  # nothing doubles or goes missing afterwards
                assert live_slots(tmp_path, "work") == wanted
                assert _running(urls, "work") == REPLICAS
                assert _ready(urls) == len(hosts)
                # What only the leader has (agents' logs, the endpoint registry), read through a follower
                # alone: it forwards the read, and a followed log streams through it.
                follower = next(m for m in rest if m is not leader_of(rest))
                with Client(follower.url, timeout=10) as client:
                    assert client.get("/api/v1/endpoints/work", list) == []
                    logs = b"".join(client.stream_bytes("/api/v1/services/work/logs", {"tail": 5})).decode()
                assert logs.count("hello") == REPLICAS, logs
                assert _first_followed_line(follower.url + "/api/v1/services/work/logs?follow=true&tail=1")
            assert "down" not in states.seen, _diagnosis(tmp_path)
            assert at_kill < REPLICAS  # the leader died before the deploy was done
        finally:
            for agent in agents:
                agent.kill()


HELLO_THEN_SLEEP = "import time; print('hello', flush=True); time.sleep(600)"


def _first_followed_line(url: str) -> str:
    """The first line of a followed (endless) log stream; the connection is closed after it."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.readline().decode()


def _ready(urls: str) -> int:
    try:
        with Client(urls, timeout=5) as client:
            machines = client.get("/api/v1/machines", list, agents=True)
    except Exception:
        return 0
    return sum(1 for m in machines if m.get("agent") and m["agent"]["state"] == "ready")


def _running(urls: str, service: str, *, any_state: bool = False) -> int:
    try:
        with Client(urls, timeout=5) as client:
            tasks = client.get(f"/api/v1/services/{service}/tasks", list)
    except Exception:
        return -1
    if any_state:
        return len(tasks)
    return sum(1 for t in tasks if t["desired_state"] == "running" and t["state"] == "running")


def _pids(root: Path, service: str) -> set[int]:
    return {p.pid for p in processes_under(root) if process_env(p).get("TREEHERD_SERVICE") == service}


def test_etcd_lost_while_running_stops_writes_keeps_tasks_and_recovers(
    tmp_path: Path, etcd: EtcdProcess, managers: list[ManagerProcess]
) -> None:
    wait_for(lambda: leader_of(managers), "the managers agree on one leader")
    urls = ",".join(m.url for m in managers)
    with Client(urls, timeout=10) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    agent = AgentProcess(urls, tmp_path / "host-a", "host-a", executor="process").start()
    try:
        wait_for(lambda: _ready(urls) == 1, "a ready agent")
        with Client(urls, timeout=10) as client:
            client.request(
                "POST",
                "/api/v1/services",
                ServiceCreate(
                    name="work",
                    node="corp",
                    replicas=3,
                    task=TaskSpec(command=[sys.executable, "-c", "import time; time.sleep(600)"]),
                ),
            )
        wait_for(lambda: _running(urls, "work") == 3, "3 tasks running")
        pids = _pids(tmp_path, "work")
        assert len(pids) == 3
        etcd.stop()
        # Writes are refused with the reason, by the API and the CLI alike; reads still answer.
        refusal = wait_for(lambda: _refused_write(urls), "a write refused for the lost store", timeout_s=15)
        assert refusal[0] == 503 and "etcd" in refusal[1], refusal
        cli = subprocess.run(
            [*treeherd_command(), "--manager", urls, "tree", "add", "corp.db"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode != 0 and "etcd" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
        assert _running(urls, "work") == 3
        time.sleep(2.0)
        assert _pids(tmp_path, "work") == pids  # the agent keeps its tasks
        etcd.start()
        wait_for(lambda: leader_of(managers), "a leader once etcd is back", timeout_s=30)
        wait_for(lambda: _refused_write(urls, "corp.back") is None, "writes go through again", timeout_s=30)
        wait_for(lambda: _ready(urls) == 1, "the agent back with the leader", timeout_s=30)
        assert _pids(tmp_path, "work") == pids
        assert _running(urls, "work") == 3
    finally:
        agent.kill()


def _refused_write(urls: str, path: str = "corp.lost") -> tuple[int, str] | None:
    """The status and message of a refused write, or None once it is accepted."""
    try:
        with Client(urls, timeout=10) as client:
            client.request("POST", "/api/v1/nodes", NodeCreate(path=path))
    except ClientError as error:
        return (error.status or 0, str(error))
    return None


def test_a_frozen_leader_is_replaced_and_steps_down_when_it_resumes(
    tmp_path: Path, managers: list[ManagerProcess]
) -> None:
    """SIGSTOP the leader past its lease: another manager leads; once resumed, the stale leader finds
    its lease gone and stops its leader components (its writes are fenced meanwhile); tasks run once."""
    leader = wait_for(lambda: leader_of(managers), "the managers agree on one leader")
    urls = ",".join(m.url for m in managers)
    with Client(urls, timeout=10) as client:
        client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
    agent = AgentProcess(urls, tmp_path / "host-a", "host-a", executor="process").start()
    try:
        wait_for(lambda: _ready(urls) == 1, "a ready agent")
        with Client(urls, timeout=10) as client:
            client.request(
                "POST",
                "/api/v1/services",
                ServiceCreate(
                    name="work",
                    node="corp",
                    replicas=3,
                    task=TaskSpec(command=[sys.executable, "-c", "import time; time.sleep(600)"]),
                ),
            )
        wait_for(lambda: _running(urls, "work") == 3, "3 tasks running")
        pids = _pids(tmp_path, "work")
        assert leader.process is not None
        leader.process.send_signal(signal.SIGSTOP)
        try:
            rest = [m for m in managers if m is not leader]
            new_leader = wait_for(lambda: leader_of(rest), "a new leader", timeout_s=ELECTION_S + 5)
        finally:
            leader.process.send_signal(signal.SIGCONT)
        wait_for(
            lambda: "lost its leadership" in leader.log(), "the stale leader stepping down", timeout_s=10
        )
        assert wait_for(lambda: leader_of(managers), "all three agree again") is new_leader
        wait_for(lambda: _refused_write(urls, "corp.after") is None, "a write", timeout_s=15)
        wait_for(lambda: _ready(urls) == 1, "the agent with the new leader", timeout_s=15)
        assert _pids(tmp_path, "work") == pids
        assert _running(urls, "work") == 3
        assert "Traceback" not in leader.log()
    finally:
        agent.kill()


def _diagnosis(root: Path) -> str:
    """The managers' and agents' log lines about leadership, nodes and sessions."""
    words = ("lead", "down", "unknown", "refused", "dialing", "etcd")
    lines = []
    for log in sorted(root.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if any(word in line for word in words):
                lines.append(f"{log.name}: {line[:220]}")
    return "\n".join(lines[-80:])
