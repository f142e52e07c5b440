#!/usr/bin/env python3
"""Chaos run: what each kind of failure costs the traffic, and how long the cluster takes to recover.

Starts, in a temporary directory on 127.0.0.1: a manager (SQLite), two agents (`host-a`, `host-b`, process
executor), and an edge gateway (`treeherd gateway run`, real nginx). Two services:
- `web`, 4 replicas of a small HTTP server with an HTTP health check, on the tree node `chaos.web`, routed
  from the domain `chaos.test` through the gateway's nginx;
- `api`, 2 replicas of the same server, the dependency of `app` (one task on host-a), so host-a's agent runs
  a local haproxy that forwards 127.0.0.1:LOCALPORT to api's endpoints.
Two load loops send steady GETs (every `--interval` s each): through nginx (the edge path) and to
127.0.0.1:LOCALPORT (the dependency path). Then, one at a time, with recovery in between:

  task      kill -9 one web task process
  agent     kill -9 host-b's agent (its tasks keep running); restarted after 1 s, as a supervisor would
  manager   kill -9 the manager; restarted at once on the same data and port
  gateway   kill -9 `treeherd gateway run` (nginx keeps running); restarted at once
  nginx     kill -9 the gateway's nginx master
  haproxy   kill -9 host-a's haproxy master
  sigstop   SIGSTOP host-b's agent for longer than the heartbeat grace, then SIGCONT
  sigstop-wait  the same with `web` set to `--on-node-down wait` for the scenario (its slots on host-b
            are kept, not replaced: none runs twice)

For each: failed requests on each path, the time until the cluster serves the *current* configuration
again (a domain added after the fault answers through nginx; web has 4 live endpoints; the dependency
port answers), and how many slots of `web` were seen running twice, or not at all, in the OS process
table (sampled every 0.2 s). Writes OUT/chaos.json and OUT/chaos.png.

    .venv/bin/python benchmarks/chaos.py                    # every scenario, ~3 min
    .venv/bin/python benchmarks/chaos.py --scenarios task,nginx
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchlib import machine_info
from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate, ServiceUpdate
from treeherd.model.services import Placement, PortSpec, RestartPolicy, TaskSpec
from treeherd.testing.ports import free_port
from treeherd.testing.processes import (
    AgentProcess,
    GatewayProcess,
    ManagerProcess,
    processes_under,
    reap_processes_under,
)
from treeherd.testing.waiting import wait_for as shared_wait_for
from treeherd.transport.client import Client

SCENARIOS = ("task", "agent", "manager", "gateway", "nginx", "haproxy", "sigstop", "sigstop-wait")
DOMAIN = "chaos.test"
HEARTBEAT_S = 1.0
GRACE_S = 3 * (HEARTBEAT_S + 0.2)  # the default grace multiplier (3) over period + epsilon
SERVER = """
import http.server, os
port = int(os.environ["TREEHERD_PORT_HTTP"])
body = (os.environ["TREEHERD_SERVICE"] + " " + os.environ["TREEHERD_SLOT"]).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def wait_for(check: Callable[[], Any], what: str, timeout: float, poll_s: float = 0.05) -> Any:
    """The shared bounded wait, where a check that raises (the API down while the manager restarts) counts
    as not yet; a timeout is a TimeoutError, which a scenario records as not recovered."""

    def tolerant() -> Any:
        try:
            return check()
        except Exception:
            return None

    try:
        return shared_wait_for(tolerant, what, timeout, poll_s=poll_s)
    except AssertionError as timed_out:
        raise TimeoutError(str(timed_out)) from None


def http_get(port: int, host: str | None = None, timeout: float = 2.0) -> int:
    """The status of one GET on 127.0.0.1:port (a new connection each time, as independent clients)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host or "localhost", "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Load(threading.Thread):
    """GETs at a steady pace; records (monotonic time, ok) for every request. Stops by itself at `limit_s`."""

    def __init__(self, name: str, port: int, host: str | None, interval_s: float, limit_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.host, self.interval_s, self.limit_s = port, host, interval_s, limit_s
        self.results: list[tuple[float, bool]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.limit_s
        while not self.stopped.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                ok = http_get(self.port, self.host) == 200
            except OSError:
                ok = False
            self.results.append((started, ok))
            self.stopped.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def failures(self, start: float, end: float) -> tuple[int, int]:
        window = [ok for t, ok in self.results if start <= t <= end]
        return sum(1 for ok in window if not ok), len(window)


class SlotAudit(threading.Thread):
    """Samples the OS process table: which web slots have how many live task processes."""

    def __init__(self, root: Path, service: str, slots: int) -> None:
        super().__init__(name="slot-audit", daemon=True)
        self.root, self.service, self.slots = root, service, slots
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.stopped = threading.Event()

    def counts(self) -> dict[int, int]:
        counts = dict.fromkeys(range(1, self.slots + 1), 0)
        for process in processes_under(self.root):
            with contextlib.suppress(psutil.Error):
                env = process.environ()
                # Each task is a process group: its leader is the task; children of it are not a second task.
                leader = process.pid == os.getpgid(process.pid)
                if leader and env.get("TREEHERD_SERVICE") == self.service and "TREEHERD_SLOT" in env:
                    slot = int(env["TREEHERD_SLOT"])
                    counts[slot] = counts.get(slot, 0) + 1
        return counts

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.samples.append((time.monotonic(), self.counts()))

    def summary(self, start: float, end: float) -> dict[str, Any]:
        window = [counts for t, counts in self.samples if start <= t <= end]
        twice = {slot for counts in window for slot, n in counts.items() if n > 1}
        seconds_twice = sum(0.2 for counts in window if any(n > 1 for n in counts.values()))
        lost_at_end = [slot for slot, n in (window[-1] if window else {}).items() if n == 0]
        return {
            "slots_seen_twice": sorted(twice),
            "seconds_with_a_slot_twice": round(seconds_twice, 1),
            "slots_without_process_at_end": lost_at_end,
        }


class Chaos:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.port = free_port()
        self.domain_port = free_port()
        self.manager = ManagerProcess(root / "manager", listen=f"127.0.0.1:{self.port}")
        self.url = f"http://127.0.0.1:{self.port}"
        self.agents = {
            h: AgentProcess(self.url, root / h, h, executor="process") for h in ("host-a", "host-b")
        }
        self.gateway = GatewayProcess(self.url, root / "nginx", health_interval_s=0.5, probe_interval_s=None)
        self.dependency_port = 0
        self.probes = 0

    def client(self) -> Client:
        return Client(self.url, timeout=10)

    # ---- setup ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.manager.start()
        with self.client() as client:
            client.request(
                "PATCH",
                "/api/v1/cluster",
                ClusterUpdate(heartbeat_period_s=HEARTBEAT_S, heartbeat_epsilon_s=0.2, endpoint_ttl_s=3.0),
            )
            client.request("POST", "/api/v1/nodes", NodeCreate(path="chaos"))
            client.request("POST", "/api/v1/nodes", {"path": "chaos.web", "port": 8080})
            client.request("POST", "/api/v1/domains", {"name": DOMAIN, "ports": [{"port": self.domain_port}]})
            client.request("POST", "/api/v1/nodes/chaos.web/routes", {"domain": DOMAIN, "uri": "/"})
        for agent in self.agents.values():
            agent.start()
        self.gateway.start()
        health = HealthCheck(kind="http", interval_s=0.5, timeout_s=1.0, retries=1)
        server = TaskSpec(
            command=[sys.executable, "-c", SERVER],
            ports=[PortSpec(name="http")],
            restart=RestartPolicy(delay_s=0.0),
            health=health,
        )
        app = TaskSpec(
            command=["sleep", "3600"],
            depends_on=[Dependency(service="api")],
            placement=Placement(constraints=["node.hostname==host-a"]),
        )
        with self.client() as client:
            wait_for(lambda: self.agents_ready() == 2, "two agents ready", 30)
            for name, node, replicas, spec in (
                ("web", "chaos.web", 4, server),
                ("api", "chaos", 2, server),
                ("app", "chaos", 1, app),
            ):
                client.request(
                    "POST",
                    "/api/v1/services",
                    ServiceCreate(name=name, node=node, replicas=replicas, task=spec),
                )
        self.dependency_port = int(
            wait_for(self._dependency_port, "app's TREEHERD_DEP_API", 60).rsplit(":", 1)[1]
        )
        self.wait_steady(60)

    def _dependency_port(self) -> str | None:
        for process in processes_under(self.root):
            with contextlib.suppress(psutil.Error):
                env = process.environ()
                if env.get("TREEHERD_SERVICE") == "app" and env.get("TREEHERD_DEP_API"):
                    return env["TREEHERD_DEP_API"]
        return None

    # ---- what "serving" means -----------------------------------------------------------------------
    def endpoint_tasks(self, name: str) -> list[str | None]:
        with self.client() as client:
            return [e.get("task_id") for e in client.get(f"/api/v1/endpoints/{name}", list)]

    def endpoints(self, name: str) -> int:
        return len(self.endpoint_tasks(name))

    def agents_ready(self) -> int:
        with self.client() as client:
            machines = client.get("/api/v1/machines", list, agents=True)
        return sum(1 for m in machines if (m.get("agent") or {}).get("state") == "ready")

    def edge_answers(self, host: str = DOMAIN) -> bool:
        with contextlib.suppress(OSError):
            return http_get(self.domain_port, host) == 200
        return False

    def dependency_answers(self) -> bool:
        with contextlib.suppress(OSError):
            return http_get(self.dependency_port) == 200
        return False

    def steady(self) -> bool:
        return (
            self.agents_ready() == 2
            and self.endpoints("web") == 4
            and self.endpoints("api") == 2
            and all(self.edge_answers() for _ in range(4))
            and all(self.dependency_answers() for _ in range(4))
        )

    def wait_steady(self, timeout: float) -> None:
        wait_for(self.steady, "the cluster to serve steadily", timeout, poll_s=0.2)

    def current_configuration_served(self) -> bool:
        """A new domain routed to web answers through nginx: the gateway renders and nginx reloads."""
        self.probes += 1
        host = f"probe-{self.probes}.{DOMAIN}"
        with self.client() as client:
            client.request("POST", "/api/v1/domains", {"name": host, "ports": [{"port": self.domain_port}]})
            client.request("POST", "/api/v1/nodes/chaos.web/routes", {"domain": host, "uri": "/"})
        wait_for(lambda: self.edge_answers(host), f"nginx to serve {host}", self.args.recovery_timeout)
        return True

    # ---- faults -------------------------------------------------------------------------------------
    def web_task_pids(self) -> list[int]:
        found = []
        for process in processes_under(self.root):
            with contextlib.suppress(psutil.Error):
                if process.environ().get("TREEHERD_SERVICE") == "web" and process.pid == os.getpgid(
                    process.pid
                ):
                    found.append(process.pid)
        return found

    def haproxy_master(self) -> int | None:
        for process in processes_under(self.root / "host-a"):
            with contextlib.suppress(psutil.Error):
                if process.name() == "haproxy" and process.parent().name() != "haproxy":
                    return process.pid
        return None

    def fault(self, scenario: str) -> Callable[[], None]:
        """Inflict the fault; returns what to wait for (the recovery), raising TimeoutError if it never comes."""
        timeout = self.args.recovery_timeout
        if scenario == "task":
            victim = self.web_task_pids()[0]
            task_id = psutil.Process(victim).environ()["TREEHERD_TASK_ID"]
            os.killpg(victim, signal.SIGKILL)
            # Recovered once the dead task left the endpoints and a replacement is one of the four.
            gone = lambda: task_id not in self.endpoint_tasks("web")  # noqa: E731
            return lambda: (
                wait_for(gone, "the dead task out of the endpoints", timeout),
                self.wait_steady(timeout),
            )
        if scenario == "agent":
            agent = self.agents["host-b"]
            assert agent.process is not None
            os.kill(agent.process.pid, signal.SIGKILL)
            agent.process.wait(10)
            time.sleep(1.0)
            agent.start()
            return lambda: self.wait_steady(timeout)
        if scenario == "manager":
            assert self.manager.process is not None
            os.kill(self.manager.process.pid, signal.SIGKILL)
            self.manager.process.wait(10)
            self.manager.start()
            return lambda: (self.current_configuration_served(), self.wait_steady(timeout))
        if scenario == "gateway":
            self.gateway.kill()
            self.gateway.start()
            return lambda: (self.current_configuration_served(), self.wait_steady(timeout))
        if scenario == "nginx":
            pid = self.gateway.nginx_pid()
            assert pid is not None, "the gateway's nginx is not running"
            os.kill(pid, signal.SIGKILL)
            return lambda: (self.current_configuration_served(), self.wait_steady(timeout))
        if scenario == "haproxy":
            pid = self.haproxy_master()
            assert pid is not None, "host-a's haproxy is not running"
            os.kill(pid, signal.SIGKILL)
            new_master = lambda: (m := self.haproxy_master()) is not None and m != pid  # noqa: E731
            return lambda: (wait_for(new_master, "a new haproxy master", timeout), self.wait_steady(timeout))
        if scenario in ("sigstop", "sigstop-wait"):
            if scenario == "sigstop-wait":
                self.on_node_down("wait")
            agent = self.agents["host-b"]
            assert agent.process is not None
            os.kill(agent.process.pid, signal.SIGSTOP)
            time.sleep(GRACE_S + 3.0)
            os.kill(agent.process.pid, signal.SIGCONT)
            if scenario == "sigstop-wait":
                return lambda: (self.wait_steady(timeout), self.on_node_down("replace"))
            return lambda: self.wait_steady(timeout)
        raise ValueError(scenario)

    def on_node_down(self, action: str) -> None:
        with self.client() as client:
            client.request("PATCH", "/api/v1/services/web", ServiceUpdate(on_node_down=action))

    def run_scenario(self, scenario: str, edge: Load, dependency: Load, audit: SlotAudit) -> dict[str, Any]:
        start = time.monotonic()
        recovered: float | None = None
        error = ""
        try:
            try:
                self.wait_steady(self.args.recovery_timeout)
            except TimeoutError:
                raise TimeoutError("the cluster was not serving steadily before this fault") from None
            time.sleep(1.0)
            start = time.monotonic()
            recover = self.fault(scenario)
            recover()
            recovered = time.monotonic()
        except (TimeoutError, AssertionError) as failure:
            error = str(failure)
        time.sleep(1.0)  # requests right after the recovery count too
        end = time.monotonic()
        edge_failed, edge_total = edge.failures(start, end)
        dep_failed, dep_total = dependency.failures(start, end)
        result = {
            "scenario": scenario,
            "recovery_s": None if recovered is None else round(recovered - start, 3),
            "recovered": recovered is not None,
            "error": error,
            "edge_failed": edge_failed,
            "edge_requests": edge_total,
            "dependency_failed": dep_failed,
            "dependency_requests": dep_total,
            **audit.summary(start, end),
        }
        print(json.dumps(result), flush=True)
        if recovered is None:
            # Leave the cluster as whole as possible for the next scenario.
            with contextlib.suppress(Exception):
                self.restart_everything_dead()
        return result

    def restart_everything_dead(self) -> None:
        if self.manager.process is None or self.manager.process.poll() is not None:
            self.manager.start()
        for agent in self.agents.values():
            if agent.process is None or agent.process.poll() is not None:
                agent.start()
        if not self.gateway.running():
            self.gateway.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception), self.client() as client:
            for name in ("app", "api", "web"):
                client.request("DELETE", f"/api/v1/services/{name}")
        with contextlib.suppress(Exception):
            wait_for(lambda: not self.web_task_pids(), "web's processes to stop", 20)
        self.gateway.stop()
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                os.kill(agent.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            agent.stop()
        self.manager.stop()
        nginx = self.gateway.nginx_pid()
        if nginx is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nginx, signal.SIGQUIT)
            with contextlib.suppress(psutil.Error):
                psutil.Process(nginx).wait(10)

    def end_listeners(self) -> int:
        """End what still listens on the edge port: nginx workers whose master was killed outlive it, and
        their command line names no path of ours. Returns how many there were."""
        pids = {
            c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.domain_port
        }
        victims = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                victims.append(psutil.Process(pid))
                victims[-1].kill()
        psutil.wait_procs(victims, timeout=10)
        return len(victims)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scenario"] for r in results]
    x = range(len(names))
    fig, (failed_ax, recovery_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.4
    failed_ax.bar(
        [i - width / 2 for i in x], [r["edge_failed"] for r in results], width, label="edge (nginx)"
    )
    failed_ax.bar(
        [i + width / 2 for i in x],
        [r["dependency_failed"] for r in results],
        width,
        label="dependency (haproxy)",
    )
    failed_ax.set_xticks(list(x), names)
    failed_ax.set_ylabel("failed requests")
    failed_ax.set_title("Failed requests per fault")
    failed_ax.legend()
    recovery = [r["recovery_s"] if r["recovery_s"] is not None else 0 for r in results]
    bars = recovery_ax.bar(
        list(x), recovery, color=["tab:green" if r["recovered"] else "tab:red" for r in results]
    )
    for bar, r in zip(bars, results, strict=True):
        if not r["recovered"]:
            recovery_ax.annotate("not recovered", (bar.get_x(), 0.1), rotation=90, fontsize=8)
    recovery_ax.set_xticks(list(x), names)
    recovery_ax.set_ylabel("seconds")
    recovery_ax.set_title("Fault to serving the current configuration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, in this order")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between requests on each path")
    parser.add_argument("--recovery-timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="treeherd-chaos-") as tmp:
        root = Path(tmp)
        chaos = Chaos(root, args)
        results: list[dict[str, Any]] = []
        try:
            chaos.start()
            limit = 60.0 + 90.0 * len(scenarios)
            edge = Load("edge", chaos.domain_port, DOMAIN, args.interval, limit)
            dependency = Load("dependency", chaos.dependency_port, None, args.interval, limit)
            audit = SlotAudit(root, "web", 4)
            for thread in (edge, dependency, audit):
                thread.start()
            try:
                for scenario in scenarios:
                    results.append(chaos.run_scenario(scenario, edge, dependency, audit))
            finally:
                for thread in (edge, dependency, audit):
                    thread.stopped.set()
                    thread.join(10)
        finally:
            chaos.stop()
            left = reap_processes_under(root) + chaos.end_listeners()
            print(f"processes left after the run and ended: {left}")
    record = {
        "benchmark": "chaos",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"interval_s": args.interval, "heartbeat_period_s": HEARTBEAT_S, "grace_s": GRACE_S,
                     "web_replicas": 4, "api_replicas": 2, "recovery_timeout_s": args.recovery_timeout},
        "results": results,
        "processes_left": left,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(results, args.out / "chaos.png")
    print(f"wrote {args.out / 'chaos.json'} and {args.out / 'chaos.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
