"""What the end-to-end tests share: a real manager and agent processes on loopback, bounded waits."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.gateway.helpers import get
from treeherd.executors.docker import scope_of
from treeherd.model.requests import ClusterUpdate, NodeCreate
from treeherd.testing.processes import AgentProcess, ManagerProcess, treeherd_command
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

WAIT_S = 30.0

# A task that answers HTTP on its allocated port with its task id and slot, or 500 while the file named
# by $SICK (if set) exists; it says where it serves on stdout.
TASK_HTTP_SERVER = """
import http.server, os
port = int(os.environ["TREEHERD_PORT_HTTP"])
sick = os.environ.get("SICK")
body = (os.environ["TREEHERD_TASK_ID"] + " " + os.environ["TREEHERD_SLOT"]).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        failing = sick is not None and os.path.exists(sick)
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "0" if failing else str(len(body)))
        self.end_headers()
        if not failing:
            self.wfile.write(body)
    def log_message(self, *args):
        pass
print(f"serving {os.environ['TREEHERD_SERVICE']} slot {os.environ['TREEHERD_SLOT']} on {port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


# A task that answers every GET with JSON naming its slot (`task-N`) and its version ($V, default 1);
# single-threaded, and SIGTERM ends it at once: a request sent to it after its stop begins would fail.
# With $FAIL_EVERY=N, every Nth request but those to /health is answered 500 (N=5: a fifth of them).
TASK_JSON_SERVER = """
import http.server, json, os
port = int(os.environ["TREEHERD_PORT_HTTP"])
body = json.dumps({"name": "task-" + os.environ["TREEHERD_SLOT"], "v": os.environ.get("V", "1")}).encode()
fail_every = int(os.environ.get("FAIL_EVERY", "0"))
served = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global served
        if self.path != "/health":
            served += 1
        failing = fail_every and self.path != "/health" and served % fail_every == 0
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


class Cluster:
    def __init__(
        self,
        tmp: Path,
        *,
        executor: str = "hollow",
        url: str | None = None,
        manager_args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.executor = executor
        self._url = url  # of a manager started elsewhere; ours binds port 0 and says which it got
        self.manager = ManagerProcess(tmp / "manager", extra_args=manager_args)
        self.agents: dict[str, AgentProcess] = {}

    @property
    def url(self) -> str:
        return self.manager.url or self._url or ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start_agent(self, host: str) -> AgentProcess:
        agent = AgentProcess(self.url, self.tmp / host, host, executor=self.executor).start()
        self.agents[host] = agent
        return agent

    def cli(self, *args: str, check: bool = True) -> Any:
        """Run the real `treeherd` command against this cluster: its stdout (checked), or the result."""
        result = subprocess.run(
            [*treeherd_command(), "--manager", self.url, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stderr
            return result.stdout
        return result

    def client(self) -> Client:
        return Client(self.url, timeout=10)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        with self.client() as client:
            return client.get(f"/api/v1/services/{service}/tasks", list)

    def nodes(self) -> dict[str, str]:
        with self.client() as client:
            return {
                m["hostname"]: m["agent"]["state"] for m in client.get("/api/v1/machines", list, agents=True)
            }

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service) if t["desired_state"] == "running" and t["state"] == "running"]

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.manager.kill()


@contextlib.contextmanager
def running_cluster(
    tmp: Path,
    hosts: Sequence[str],
    *,
    settings: ClusterUpdate,
    executor: str = "hollow",
    manager_args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    """A manager (started with `manager_args`) with these cluster settings and the tree node `corp`, and
    one ready agent per host; everything stopped by pid afterwards."""
    cluster = Cluster(tmp, executor=executor, manager_args=manager_args)
    try:
        cluster.manager.start()
        with cluster.client() as client:
            client.request("PATCH", "/api/v1/cluster", settings)
            client.request("POST", "/api/v1/nodes", NodeCreate(path="corp"))
        for host in hosts:
            cluster.start_agent(host)
        wait_for(lambda: cluster.nodes() == dict.fromkeys(hosts, "ready"), f"{len(hosts)} ready agents")
        yield cluster
    finally:
        cluster.stop()


def try_call(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or None when it fails with an OSError (not listening yet, refused, reset)."""
    try:
        return fn(*args)
    except OSError:
        return None


def process_env(process: psutil.Process) -> dict[str, str]:
    """A process's environment, empty if it is gone or not ours to read."""
    try:
        return process.environ()
    except psutil.Error:
        return {}


class EdgeAndLocalLoad:
    """Steady GETs for `host`, in a thread while the context is open: through the gateway's nginx on
    `domain_port` and through the local haproxy on `local_port`, as a dependent task reaches the service.
    Counts each path's statuses (0: no answer) and each value of `field` in nginx's JSON bodies."""

    def __init__(self, domain_port: int, local_port: int, host: str, field: str) -> None:
        self.domain_port, self.local_port, self.host, self.field = domain_port, local_port, host, field
        self.statuses: Counter[int] = Counter()  # through the gateway's nginx
        self.local: Counter[int] = Counter()  # through the local haproxy
        self.seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> EdgeAndLocalLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.domain_port, "/", self.host)
            except OSError:
                status, body = 0, None
            self.statuses[status] += 1
            if body:
                self.seen[body[self.field]] += 1
            try:
                self.local[get(self.local_port, "/", self.host)[0]] += 1
            except OSError:
                self.local[0] += 1


def requests_retried(data: Path, host: str, since: float, answered: int) -> list[dict[str, Any]]:
    """The requests in the gateway's access log for `host` since `since` (at least `answered` of them)
    that nginx sent to more than one task or did not answer 200. nginx retries a refused connection on
    another server, which a client never sees: the log shows whether any request was sent to a task
    that had already stopped."""
    logs = list(data.rglob(f"{host}_access.log"))
    assert logs, "the gateway's access log"
    entries = [json.loads(line) for line in logs[0].read_text().splitlines()]
    during = [e for e in entries if e["msec"] >= since]
    assert len(during) >= answered
    return [e for e in during if "," in e["upstream_status"] or e["status"] != 200]


@contextlib.contextmanager
def docker_cluster(tmp: Path) -> Iterator[Cluster]:
    """A manager and one agent (`host-a`) with the docker executor, with quick heartbeats."""
    with running_cluster(
        tmp,
        ("host-a",),
        settings=ClusterUpdate(heartbeat_period_s=0.5, heartbeat_epsilon_s=0.1, heartbeat_grace_multiplier=3),
        executor="docker",
    ) as cluster:
        yield cluster


def docker_scope(cluster: Cluster) -> str:
    """The label value of the containers of `docker_cluster`'s agent."""
    return scope_of(cluster.tmp / "host-a" / "docker")
