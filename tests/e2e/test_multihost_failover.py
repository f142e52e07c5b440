"""Several managers across hosts: a 3-member etcd and three managers, one of each per manager host, five
agent hosts (each with an agent running real processes and a hollow one), a gateway host (the edge: nginx
routing shop.test to backends on three agent hosts) and an operator's host for the API, each host a
network namespace with its own address (treeherd.testing.hosts). The leader manager is killed with SIGKILL during a deploy
of 20 processes and 5,000 hollow tasks while writes keep coming; then an etcd member is killed; then an agent host's cable is pulled past its
grace and put back. Every slot runs exactly once (counted in the OS process table), every acknowledged
write is there, the gateway keeps serving and follows the new leader (a domain added after the failover
reaches its nginx), and a pulled host's tasks move and are stopped on it when it returns. Last, the new
leader is frozen with SIGSTOP past its lease: the last manager leads, and the stale one steps down."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.helpers import process_env
from tests.e2e.test_failover import ELECTION_S, leader_of
from tests.gateway.helpers import BACKEND_SCRIPT
from treeherd.executors.process import ProcessExecutor
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import Placement, RestartPolicy, TaskSpec
from treeherd.testing.etcd import EtcdCluster, etcd_binary
from treeherd.testing.hosts import Host, hosts_unavailable, network
from treeherd.testing.processes import (
    AgentProcess,
    GatewayProcess,
    ManagerProcess,
    processes_under,
    reap_processes_under,
)
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client, ClientError

UNAVAILABLE = hosts_unavailable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.hosts,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"multi-host tests: {UNAVAILABLE}"),
    pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"),
]
REPLICAS = 20
HOLLOW_REPLICAS = 5000  # beside the real processes: hollow agents (one per agent host) run nothing
AGENT_HOSTS = [f"node{i}" for i in range(1, 6)]
MANAGER_HOSTS = ["mgr1", "mgr2", "mgr3"]
WEB_HOSTS = AGENT_HOSTS[:3]  # the agent hosts that also run a web backend behind the gateway
EDGE_PORT, BACKEND_PORT = 8080, 8000
T = TypeVar("T")


class Operator:
    """API calls made from the operator's host to every manager (the client tries them in turn)."""

    def __init__(self, host: Host, urls: str) -> None:
        self.host = host
        self.urls = urls

    def call(self, fn: Callable[[Client], T]) -> T:
        def run() -> T:
            with Client(self.urls, timeout=5) as client:
                return fn(client)

        return self.host.call(run, timeout=30)

    def quietly(self, fn: Callable[[Client], T], default: T) -> T:
        try:
            return self.call(fn)
        except Exception:
            return default

    def ready(self) -> int:
        machines = self.quietly(lambda c: c.get("/api/v1/machines", list, agents=True), [])
        return sum(1 for m in machines if m.get("agent") and m["agent"]["state"] == "ready")

    def running(self, service: str) -> int:
        tasks = self.quietly(lambda c: c.get(f"/api/v1/services/{service}/tasks", list), [])
        return sum(1 for t in tasks if t["desired_state"] == "running" and t["state"] == "running")

    def slots(self, service: str) -> int:
        """How many slots have exactly one running task (-1 when some slot has more than one)."""
        tasks = self.quietly(lambda c: c.get(f"/api/v1/services/{service}/tasks", list), [])
        counts: dict[int, int] = {}
        for t in tasks:
            if t["desired_state"] == "running" and t["state"] == "running":
                counts[t["slot"]] = counts.get(t["slot"], 0) + 1
        return -1 if any(n > 1 for n in counts.values()) else len(counts)

    def tasks(self, service: str) -> int:
        return len(self.quietly(lambda c: c.get(f"/api/v1/services/{service}/tasks", list), []))


class Writer:
    """Creates tree nodes one after another from the operator's host while the context is open, and
    keeps the paths whose creation was acknowledged."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.acknowledged: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(40)

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(0.05):
            number += 1
            path = f"corp.w{number}"
            try:
                self.operator.call(
                    lambda c, path=path: c.request("POST", "/api/v1/nodes", NodeCreate(path=path))
                )
            except ClientError:
                self.refused += 1  # not acknowledged: the cluster is between leaders
                continue
            except Exception:
                self.refused += 1
                continue
            self.acknowledged.append(path)


def _created(ops: Operator, path: str) -> bool:
    """Create the tree node (True once it exists, whichever attempt made it)."""
    try:
        ops.call(lambda c: c.request("POST", "/api/v1/nodes", NodeCreate(path=path)))
    except ClientError as error:
        return error.status == 409
    except Exception:
        return False
    return True


class Edge:
    """The gateway host's nginx, asked from the operator's host: who answers a domain."""

    def __init__(self, gateway: Host, client: Host) -> None:
        self.gateway = gateway
        self.client = client

    def answer(self, domain: str) -> str | None:
        """The backend host that answered `domain`'s `/`, or None (no answer, or not a 200)."""
        url = f"http://{self.gateway.address}:{EDGE_PORT}/"
        try:
            status, body = self.client.http_get(url, headers={"Host": domain}, timeout=2)
        except OSError:
            return None
        return str(json.loads(body)["name"]) if status == 200 else None

    def answers(self, domain: str, tries: int = 9) -> set[str]:
        """The backends seen over `tries` requests ("" for a request that got no 200)."""
        return {self.answer(domain) or "" for _ in range(tries)}


def route(ops: Operator, domain: str) -> None:
    """Through the API: `domain` on the edge port, its `/` routed to the tree node `shop`."""
    ops.call(lambda c: c.request("POST", "/api/v1/domains", {"name": domain, "ports": [{"port": EDGE_PORT}]}))
    ops.call(lambda c: c.request("POST", "/api/v1/nodes/shop/routes", {"domain": domain, "uri": "/"}))


def slots(root: Path, service: str, hosts: list[Host]) -> dict[int, int]:
    """How many live processes each slot of `service` has on `hosts`, from the OS process table."""
    inside = {pid for host in hosts for pid in host.pids()}
    counts: dict[int, int] = {}
    for process in processes_under(root):
        if process.pid not in inside:
            continue
        env = process_env(process)
        if env.get("TREEHERD_SERVICE") == service:
            slot = int(env["TREEHERD_SLOT"])
            counts[slot] = counts.get(slot, 0) + 1
    return counts


def test_managers_on_hosts_survive_a_leader_kill_an_etcd_member_and_a_pulled_cable(tmp_path: Path) -> None:
    with network([*MANAGER_HOSTS, *AGENT_HOSTS, "gw", "ops"]) as net:
        manager_hosts = [net[name] for name in MANAGER_HOSTS]
        agent_hosts = [net[name] for name in AGENT_HOSTS]
        etcd = EtcdCluster(tmp_path / "etcd", hosts=manager_hosts)
        managers: list[ManagerProcess] = []
        agents: list[AgentProcess] = []
        gateway: GatewayProcess | None = None
        backends: list[subprocess.Popen[bytes]] = []
        try:
            etcd.start()
            store = etcd.url("/cluster")
            managers = [
                ManagerProcess(
                    tmp_path / f"manager-{host.name}", host=host, extra_args=("--store", store)
                ).start()
                for host in manager_hosts
            ]
            ops = Operator(net["ops"], ",".join(m.url for m in managers))
            leader = wait_for(lambda: ops.host.call(leader_of, managers), "the managers agree on one leader")
            ops.call(
                lambda c: c.request(
                    "PATCH",
                    "/api/v1/cluster",
                    ClusterUpdate(
                        heartbeat_period_s=0.5,
                        heartbeat_epsilon_s=0.1,
                        heartbeat_grace_multiplier=3,
                        # A pulled host takes its two agents (of ten) down: not a mass loss here.
                        node_loss_fraction=0.3,
                    ),
                )
            )
            ops.call(lambda c: c.request("POST", "/api/v1/nodes", NodeCreate(path="corp")))
            for host in agent_hosts:
                for kind in ("process", "hollow"):
                    name = host.name if kind == "process" else f"{host.name}-hollow"
                    agent = AgentProcess(
                        ops.urls, tmp_path / name, name, executor=kind, labels=(f"kind={kind}",), host=host
                    )
                    agents.append(agent.start())
            wait_for(lambda: ops.ready() == len(agents), "ten ready agents")
            machines = ops.call(lambda c: c.get("/api/v1/machines", list))
            assert {m["hostname"]: m["ips"] for m in machines if not m["hostname"].endswith("-hollow")} == {
                h.name: [h.address] for h in agent_hosts
            }

            # The edge: shop.test on the gateway host, served by a backend on each web host (the machines
            # the agents registered, bound to the tree node).
            ops.call(lambda c: c.request("POST", "/api/v1/nodes", NodeCreate(path="shop", port=BACKEND_PORT)))
            for name in WEB_HOSTS:
                ops.call(lambda c, name=name: c.request(
                    "POST", f"/api/v1/machines/{name}/bindings", {"node": "shop", "weight": 1}
                ))  # fmt: skip
                backend = [sys.executable, str(BACKEND_SCRIPT), "--host", "0.0.0.0", "--port",
                           str(BACKEND_PORT), "--name", name, "--fail-file", str(tmp_path / "never")]  # fmt: skip
                backends.append(
                    net[name].popen(backend, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            route(ops, "shop.test")
            gateway = GatewayProcess(ops.urls, tmp_path / "nginx", host=net["gw"]).start()
            edge = Edge(net["gw"], net["ops"])
            wait_for(lambda: edge.answers("shop.test") == set(WEB_HOSTS), "the edge to serve every web host")

            # 1. The leader dies during a deploy, while writes keep coming.
            task = TaskSpec(
                command=[sys.executable, "-c", "import time; time.sleep(600)"],
                restart=RestartPolicy(delay_s=0),
                placement=Placement(constraints=["node.labels.kind==process"]),
            )
            hollow = TaskSpec(
                command=["hollow"],
                restart=RestartPolicy(delay_s=0),
                placement=Placement(constraints=["node.labels.kind==hollow"]),
            )
            with Writer(ops) as writer:
                wait_for(lambda: len(writer.acknowledged) >= 3, "writes acknowledged")
                for name, replicas, spec in (("bulk", HOLLOW_REPLICAS, hollow), ("work", REPLICAS, task)):
                    service = ServiceCreate(name=name, node="corp", replicas=replicas, task=spec)
                    ops.call(lambda c, service=service: c.request("POST", "/api/v1/services", service))
                wait_for(lambda: ops.tasks("work") > 0, "the deploy under way")
                bulk_at_kill = ops.running("bulk")
                leader.kill()
                killed = time.monotonic()
                rest = [m for m in managers if m is not leader]
                new_leader = wait_for(
                    lambda: ops.host.call(leader_of, rest), "a new leader", timeout_s=ELECTION_S + 5
                )
                assert time.monotonic() - killed < ELECTION_S + 1
                acknowledged_before = len(writer.acknowledged)
                wait_for(
                    lambda: len(writer.acknowledged) > acknowledged_before + 3, "writes acknowledged again"
                )
            wanted = dict.fromkeys(range(1, REPLICAS + 1), 1)
            wait_for(
                lambda: slots(tmp_path, "work", agent_hosts) == wanted, "one process per slot", timeout_s=60
            )
            wait_for(lambda: ops.running("work") == REPLICAS, "every task running in the store")
            wait_for(lambda: ops.ready() == len(agents), "every agent with the new leader")
            wait_for(lambda: ops.slots("bulk") == HOLLOW_REPLICAS, "every hollow slot running once", 120)
            assert bulk_at_kill < HOLLOW_REPLICAS  # the leader died before that deploy was done
            paths = {n["path"] for n in ops.call(lambda c: c.get("/api/v1/nodes", list))}
            missing = [p for p in writer.acknowledged if p not in paths]
            assert missing == [], f"acknowledged writes missing after the failover: {missing}"
            # The edge kept serving (nginx outlives any manager) and its gateway follows the new leader.
            assert edge.answers("shop.test") == set(WEB_HOSTS)
            route(ops, "late.test")
            wait_for(lambda: edge.answers("late.test") == set(WEB_HOSTS), "a domain added after the failover")
            assert gateway.running()

            # 2. An etcd member dies (the one beside the new leader): nothing visible.
            etcd.members[managers.index(new_leader)].kill()
            # etcd elects a new raft leader of its own when that member led it (about 2 s here): a write
            # may wait that long, and is then accepted.
            wait_for(lambda: _created(ops, "corp.after-etcd"), "a write after an etcd member's death", 20)
            time.sleep(2.0)
            assert slots(tmp_path, "work", agent_hosts) == wanted
            assert ops.running("work") == REPLICAS and ops.ready() == len(agents)

            # 3. An agent host's cable is pulled past its grace: its tasks move; back, it stops its own.
            pulled, others = agent_hosts[-1], agent_hosts[:-1]
            on_pulled = slots(tmp_path, "work", [pulled])
            assert on_pulled, "the scheduler spread the tasks over every host"
            pulled.link_down()
            wait_for(
                lambda: slots(tmp_path, "work", others) == wanted, "the pulled host's slots elsewhere", 60
            )
            assert slots(tmp_path, "work", [pulled]) == on_pulled  # still running there, unreachable
            pulled.link_up()
            wait_for(
                lambda: slots(tmp_path, "work", [pulled]) == {}, "its old tasks stopped on its return", 60
            )
            wait_for(lambda: ops.ready() == len(agents), "the pulled host's agents back", 60)
            wait_for(lambda: ops.slots("bulk") == HOLLOW_REPLICAS, "every hollow slot running once", 60)
            time.sleep(1.0)
            assert slots(tmp_path, "work", agent_hosts) == wanted
            assert ops.running("work") == REPLICAS

            # 4. The leader is frozen (SIGSTOP) past its lease: the last manager leads; resumed, the stale
            # leader finds its lease gone and steps down (its writes are fenced by etcd meanwhile).
            live = [m for m in managers if m is not leader]
            frozen = wait_for(lambda: ops.host.call(leader_of, live), "one leader of the two left")
            assert frozen.process is not None
            frozen.process.send_signal(signal.SIGSTOP)
            try:
                last = [m for m in live if m is not frozen]
                wait_for(lambda: ops.host.call(leader_of, last), "the last manager leading", ELECTION_S + 5)
            finally:
                frozen.process.send_signal(signal.SIGCONT)
            wait_for(lambda: "lost its leadership" in frozen.log(), "the stale leader stepping down", 15)
            assert wait_for(lambda: ops.host.call(leader_of, live), "both agree again") is last[0]
            wait_for(lambda: _created(ops, "corp.after-freeze"), "a write after the freeze", 20)
            wait_for(lambda: ops.ready() == len(agents), "every agent with the last leader", 30)
            assert slots(tmp_path, "work", agent_hosts) == wanted
            assert ops.slots("bulk") == HOLLOW_REPLICAS
            route(ops, "last.test")
            wait_for(
                lambda: edge.answers("last.test") == set(WEB_HOSTS), "a domain added under the last leader"
            )
        except BaseException:
            for log in sorted(tmp_path.glob("*.log")):
                print(f"==== {log.name}\n{log.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            if gateway is not None:
                gateway.kill()
            for agent in agents:
                agent.kill()
            for manager in managers:
                manager.kill()
            etcd.stop()
            for host in net:
                host.kill_all()
            for backend in backends:
                backend.wait(10)
            reap_processes_under(tmp_path)

            asyncio.run(_purge_tasks([root for root in tmp_path.rglob("process") if root.is_dir()]))


async def _purge_tasks(roots: list[Path]) -> None:
    """What a next agent would purge of the killed agents' tasks (their cgroups)."""
    for root in roots:
        executor = ProcessExecutor(root)
        for task_id in executor.task_ids():
            await executor.purge(task_id)
