"""treeherd.testing.hosts: hosts in network namespaces on one bridge reach each other by address and
nothing else, each has its own loopback, a link taken down stops traffic, processes inside are found
and ended, and nothing is left afterwards (even when the test fails); a real manager and agent in two
hosts run a service whose tasks answer on the agent host's address."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.gateway.helpers import BACKEND_SCRIPT

from treeherd.executors.process import ProcessExecutor
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import PortSpec, RestartPolicy, TaskSpec
from treeherd.testing.hosts import (
    PREFIX,
    Host,
    Network,
    hosts_unavailable,
    network,
    pids_in_netns,
)
from treeherd.testing.processes import AgentProcess, GatewayProcess, ManagerProcess, reap_processes_under
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

UNAVAILABLE = hosts_unavailable()
pytestmark = [
    pytest.mark.hosts,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"multi-host tests: {UNAVAILABLE}"),
]

# A task that answers HTTP on every address of its host (its loopback and its eth0) with its id and slot.
TASK_SERVER = """
import http.server, os
body = (os.environ["TREEHERD_TASK_ID"] + " " + os.environ["TREEHERD_SLOT"]).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["TREEHERD_PORT_HTTP"])), Handler).serve_forever()
"""


def ours() -> list[str]:
    """The named network namespaces of this harness, as `ip netns list` shows them."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def root_links() -> set[str]:
    """The interfaces of the machine's own namespace."""
    links = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(links)}


@pytest.fixture
def net() -> Iterator[Network]:
    with network(["a", "b"]) as made:
        yield made
    assert not [name for name in ours() if name.startswith(made.prefix)]


def server(host: Host, address: str) -> socket.socket:
    """A listening TCP socket inside `host` on address:0."""
    return host.call(socket.create_server, (address, 0))


def reaches(source: Host, address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        source.connect(address, port, timeout=timeout).close()
    except OSError:
        return False
    return True


def test_hosts_reach_each_other_by_address_and_have_no_other_route(net: Network) -> None:
    a, b = net["a"], net["b"]
    assert net.subnet is not None
    assert [a.address, b.address] == [
        str(net.subnet.network_address + 1),
        str(net.subnet.network_address + 2),
    ]
    with server(b, b.address) as listener:
        port = listener.getsockname()[1]
        with a.connect(b.address, port) as connection:
            accepted, (peer, _) = listener.accept()
            with accepted:
                accepted.sendall(b"hello")
                assert connection.recv(5) == b"hello"
        assert peer == a.address
    for host in (a, b):
        routes = json.loads(host.run(["ip", "-j", "route", "show", "table", "all"]).stdout)
        assert {r["dst"] for r in routes if r.get("table") != "local"} == {str(net.subnet)}
        addresses = json.loads(host.run(["ip", "-j", "-4", "addr", "show"]).stdout)
        assert {(i["ifname"], x["local"]) for i in addresses for x in i["addr_info"]} == {
            ("lo", "127.0.0.1"),
            ("eth0", host.address),
        }


def test_each_host_has_its_own_loopback(net: Network) -> None:
    a, b = net["a"], net["b"]
    with server(a, "127.0.0.1") as listener:
        port = listener.getsockname()[1]
        assert reaches(a, "127.0.0.1", port)
        assert not reaches(b, "127.0.0.1", port)  # refused: nothing listens on b's loopback
        with pytest.raises(OSError):  # in a itself, the port is taken
            a.call(socket.create_server, ("127.0.0.1", port))
        with b.call(socket.create_server, ("127.0.0.1", port)) as same:  # in b, the same port is free
            assert same.getsockname() == ("127.0.0.1", port)
            assert reaches(b, "127.0.0.1", port)
        with pytest.raises(OSError):
            b.call(socket.create_server, (a.address, 0))  # a's address is not b's


def test_a_link_taken_down_stops_traffic_and_up_restores_it(net: Network) -> None:
    a, b = net["a"], net["b"]
    with server(b, b.address) as to_b, server(a, a.address) as to_a:
        assert reaches(a, b.address, to_b.getsockname()[1])
        b.link_down()
        assert not b.link_is_up()
        assert not reaches(a, b.address, to_b.getsockname()[1])
        assert not reaches(b, a.address, to_a.getsockname()[1])
        with server(b, "127.0.0.1") as local:  # its own loopback still works
            assert reaches(b, "127.0.0.1", local.getsockname()[1])
        b.link_up()
        assert b.link_is_up()
        wait_for(lambda: reaches(a, b.address, to_b.getsockname()[1]), "a reaching b again", 10)
        wait_for(lambda: reaches(b, a.address, to_a.getsockname()[1]), "b reaching a again", 10)


def test_every_process_in_a_host_is_found_and_ended(net: Network) -> None:
    a, b = net["a"], net["b"]
    started = a.popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    wait_for(lambda: len(a.pids()) == 3, "the shell and its two sleeps")
    other = b.popen(["sleep", "60"])
    assert started.pid in a.pids() and other.pid not in a.pids()
    assert a.kill_all() == 3
    assert a.pids() == [] and started.wait(5) == -9
    assert b.pids() == [other.pid]
    other.kill()
    other.wait(5)


def test_nothing_is_left_even_when_the_body_raises() -> None:
    links = root_links()
    seen: dict[str, Any] = {}

    def failing_test() -> None:
        with network(["a", "b", "c"]) as made:
            seen["network"] = made
            seen["sleeper"] = sleeper = made["a"].popen(["sleep", "60"])
            stats = [Path(f"/run/netns/{name}").stat() for name in made.namespaces()]
            seen["identities"] = identities = [(stat.st_dev, stat.st_ino) for stat in stats]
            assert len(identities) == 4 and pids_in_netns(identities[1]) == [sleeper.pid]
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        failing_test()
    assert seen["sleeper"].wait(5) == -9
    assert not [name for name in ours() if name.startswith(seen["network"].prefix)]
    assert all(pids_in_netns(identity) == [] for identity in seen["identities"])
    assert root_links() == links  # nothing was added to the machine's namespace, nor is left there


def test_a_crashed_run_s_namespaces_are_removed_at_start_and_a_live_run_s_kept() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    crashed, live = f"{PREFIX}{finished.pid}-a", f"{PREFIX}{1}-a"  # pid 1 is alive
    for name in (crashed, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    orphan = subprocess.Popen(["nsenter", f"--net=/run/netns/{crashed}", "--", "sleep", "60"])
    try:
        with network(["a"]):
            assert crashed not in ours() and live in ours()
            assert orphan.wait(5) == -9
    finally:
        orphan.kill()
        orphan.wait(5)
        subprocess.run(["ip", "netns", "del", live], check=True)
        subprocess.run(["ip", "netns", "del", crashed], check=False, capture_output=True)


def test_bad_host_names_are_refused_with_the_rule(net: Network) -> None:
    with pytest.raises(ValueError, match="use 1-31 of a-z"):
        net.add("Bad_Name")
    with pytest.raises(ValueError, match="exists already"):
        net.add("a")


# ---- a real manager and agent in two hosts -------------------------------------------------------
def api(host: Host, url: str, method: str, path: str, body: Any = None) -> Any:
    """One request to the manager at `url`, sent from inside `host`."""

    def send() -> Any:
        with Client(url, timeout=10) as client:
            return client.get(path, list) if method == "GET" else client.request(method, path, body)

    return host.call(send)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Network]:
    with network(["manager", "node1"]) as made:
        try:
            yield made
        finally:
            for host in made:
                host.kill_all()
            reap_processes_under(tmp_path)
            asyncio.run(_purge_tasks([root for root in tmp_path.rglob("process") if root.is_dir()]))


async def _purge_tasks(roots: list[Path]) -> None:
    """The task cgroups a next agent would purge."""
    for root in roots:
        executor = ProcessExecutor(root)
        for task_id in executor.task_ids():
            await executor.purge(task_id)


def test_a_manager_and_an_agent_in_two_hosts_run_a_service_on_the_agent_host(
    two_hosts: Network, tmp_path: Path
) -> None:
    manager_host, node = two_hosts["manager"], two_hosts["node1"]
    manager = ManagerProcess(tmp_path / "manager", host=manager_host).start()
    assert manager.url.startswith(f"http://{manager_host.address}:")
    agent = AgentProcess(manager.url, tmp_path / "node1", "node1", executor="process", host=node).start()
    assert agent.process is not None and agent.process.pid in node.pids()
    machines = lambda: api(manager_host, manager.url, "GET", "/api/v1/machines")  # noqa: E731
    [machine] = wait_for(lambda: len(machines()) == 1 and machines(), "the agent registered")
    assert machine["ips"] == [node.address]
    api(manager_host, manager.url, "POST", "/api/v1/nodes", NodeCreate(path="corp"))
    spec = TaskSpec(
        command=[sys.executable, "-c", TASK_SERVER],
        ports=[PortSpec(name="http")],
        restart=RestartPolicy(delay_s=0),
    )
    api(
        manager_host,
        manager.url,
        "POST",
        "/api/v1/services",
        ServiceCreate(name="web", node="corp", replicas=2, task=spec),
    )

    def running() -> list[dict[str, Any]]:
        tasks = api(manager_host, manager.url, "GET", "/api/v1/services/web/tasks")
        return [t for t in tasks if t["desired_state"] == "running" and t["state"] == "running"]

    tasks = wait_for(lambda: len(running()) == 2 and running(), "2 running tasks")
    assert {t["hostname"] for t in tasks} == {"node1"}
    for task in tasks:
        url = f"http://{node.address}:{task['ports']['http']}/"
        status, body = wait_for(lambda url=url: _try_get(manager_host, url), f"{url} from the manager host")
        assert (status, body.decode()) == (200, f"{task['id']} {task['slot']}")
    endpoints = wait_for(
        lambda: len(found := api(manager_host, manager.url, "GET", "/api/v1/endpoints/web")) == 2 and found,
        "2 endpoints",
    )
    assert {(e["address"], e["port"]) for e in endpoints} == {
        (node.address, t["ports"]["http"]) for t in tasks
    }
    agent.stop()
    manager.stop()
    assert len(node.pids()) == 2  # the tasks outlive their agent, in its host
    assert node.kill_all() == 2 and node.pids() == [] and manager_host.pids() == []


def _try_get(host: Host, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes] | None:
    try:
        return host.http_get(url, headers=headers, timeout=2)
    except OSError:
        return None


def test_a_gateway_host_routes_a_client_host_to_a_backend_host(tmp_path: Path) -> None:
    with network(["manager", "gateway", "web1", "client"]) as made:
        manager_host, gateway_host, web1, client = (
            made[name] for name in ("manager", "gateway", "web1", "client")
        )
        manager = ManagerProcess(tmp_path / "manager", host=manager_host).start()
        for method, path, body in (
            ("POST", "/api/v1/domains", {"name": "shop.test", "ports": [{"port": 8080}]}),
            ("POST", "/api/v1/nodes", {"path": "shop", "port": 8000}),
            ("POST", "/api/v1/nodes/shop/routes", {"domain": "shop.test", "uri": "/"}),
            ("POST", "/api/v1/machines", {"hostname": "web1", "ips": [web1.address]}),
            ("POST", "/api/v1/machines/web1/bindings", {"node": "shop", "weight": 1}),
        ):
            api(manager_host, manager.url, method, path, body)
        backend = [
            sys.executable,
            str(BACKEND_SCRIPT),
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--name",
            "web1",
        ]
        server = web1.popen([*backend, "--fail-file", str(tmp_path / "never")], stdout=subprocess.DEVNULL)
        gateway = GatewayProcess(manager.url, tmp_path / "nginx", host=gateway_host).start()
        url, headers = f"http://{gateway_host.address}:8080/items", {"Host": "shop.test"}
        _, body = wait_for(
            lambda: (got := _try_get(client, url, headers)) and got[0] == 200 and got,
            "nginx to serve shop.test",
        )
        answer = json.loads(body)
        assert answer["name"] == "web1"
        assert answer["headers"]["x-real-ip"] == client.address  # the client's own address, seen across hosts
        assert gateway.nginx_pid() in gateway_host.pids()
        gateway.stop()
        manager.stop()
        assert len(gateway_host.pids()) >= 2  # nginx (master and workers) outlives its gateway
        identities = [(stat.st_dev, stat.st_ino) for stat in (host.netns_path.stat() for host in made)]
    assert all(pids_in_netns(identity) == [] for identity in identities)  # the network ended them
    assert server.wait(5) == -9
