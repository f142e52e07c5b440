#!/usr/bin/env python3
"""Rolling updates: how long rolling a big service takes, and what an update costs the traffic.

Starts, in a temporary directory on 127.0.0.1: a manager (SQLite), two agents with the hollow executor
(`hollow-0`, `hollow-1`: their tasks run nothing), two with the process executor (`host-a`, `host-b`), and
an edge gateway (`treeherd gateway run`, real nginx). Then:

1. **Time to roll** (`--replicas`, 100): a service of that many replicas on the hollow agents, then one
   on the process agents (`sleep` processes: the cost of starting and stopping real processes, not of any
   program's start-up). For each `--parallelism` (1, 10, 0 = all at once) a `PATCH` changes the spec
   (an environment variable) and sets that parallelism, stop-first, with an update monitor of
   `--monitor` (0.1 s: small, so the figure is the cost of the roll itself, not of waiting; the default
   monitor is 5 s per batch). Measured from the `PATCH` until every slot runs a task of the new spec
   (the API shows it RUNNING) and until the update status says `completed`.
2. **Traffic during an update** (`--traffic-replicas`, 4): `web`, a small HTTP server with an HTTP health
   check on the process agents, routed from the domain `rolling.test` through the gateway's nginx, and
   `app` on host-a depending on it, so host-a's agent runs a local haproxy forwarding
   127.0.0.1:LOCALPORT to web's tasks. Two loops send steady GETs (every `--interval` s each): through
   nginx and through the local haproxy. Then, one at a time: a start-first update (parallelism 1), a
   stop-first update (parallelism 1), a stop-first update of every slot at once (parallelism 0: an
   outage by design, for comparison), a scale-down to half, and a scale back up. For each: the failed
   requests on each path (anything but 200, or no answer), the requests nginx sent to a task that no
   longer answered (its access log shows them as retried on another task: a client need not see them),
   and how long the change took.

Every process the run starts is stopped at the end; the processes still found under the run's directory
after that (and nginx workers still listening) are counted, recorded and killed. Writes OUT/rolling.json
and OUT/rolling.png.

    .venv/bin/python benchmarks/rolling.py                 # ~3-4 min on 2 cores
    .venv/bin/python benchmarks/rolling.py --replicas 20 --executors process --parallelism 1,0
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from benchlib import machine_info
from chaos import SERVER, Gateway, Load, http_get, wait_for
from treeherd.model.discovery import Dependency, HealthCheck
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import Placement, PortSpec, RestartPolicy, TaskSpec
from treeherd.testing.ports import free_port
from treeherd.testing.processes import AgentProcess, ManagerProcess, processes_under, reap_processes_under
from treeherd.transport.client import Client

DOMAIN = "rolling.test"
EXECUTORS = ("hollow", "process")
AGENTS = {"hollow": ("hollow-0", "hollow-1"), "process": ("host-a", "host-b")}
POLL_S = 0.05


class Run:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.manager = ManagerProcess(root / "manager")
        self.agents: list[AgentProcess] = []
        self.gateway: Gateway | None = None
        self.domain_port = free_port()
        self.edits = 0

    def client(self) -> Client:
        return Client(self.manager.url, timeout=30)

    def start(self) -> None:
        self.manager.start()
        executors = set(self.args.executors) | ({"process"} if self.args.traffic_replicas else set())
        for executor in sorted(executors):
            for host in AGENTS[executor]:
                agent = AgentProcess(
                    self.manager.url,
                    self.root / host,
                    host,
                    executor=executor,
                    labels=(f"executor={executor}",),
                )
                self.agents.append(agent.start())
        with self.client() as client:
            client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
            wait_for(lambda: self.agents_ready(client) == len(self.agents), "agents ready", 60)

    def agents_ready(self, client: Client) -> int:
        machines = client.get("/api/v1/machines", list, agents=True)
        return sum(1 for m in machines if (m.get("agent") or {}).get("state") == "ready")

    # ---- 1. time to roll -------------------------------------------------------------------------
    def rolls(self, executor: str) -> list[dict[str, Any]]:
        name = f"roll-{executor}"
        replicas = self.args.replicas
        spec = TaskSpec(
            command=["sleep", "3600"],
            placement=Placement(constraints=[f"node.labels.executor=={executor}"]),
            restart=RestartPolicy(delay_s=0.0),
        )
        results = []
        with self.client() as client:
            client.request(
                "POST",
                "/api/v1/services",
                ServiceCreate(name=name, node="bench", replicas=replicas, task=spec),
            )
            version = self.wait_rolled(client, name, 1, replicas, None)[2]
            for parallelism in self.args.parallelism:
                self.edits += 1
                spec = msgspec.structs.replace(spec, env={"EDIT": str(self.edits)})
                policy = {"parallelism": parallelism, "order": "stop-first", "monitor_s": self.args.monitor}
                start = time.monotonic()
                client.request("PATCH", f"/api/v1/services/{name}", {"task": _fields(spec), "update": policy})
                running, completed, version = self.wait_rolled(client, name, version + 1, replicas, start)
                result = {
                    "executor": executor,
                    "replicas": replicas,
                    "parallelism": parallelism,
                    "order": "stop-first",
                    "monitor_s": self.args.monitor,
                    "seconds_to_all_new_running": round(running, 3),
                    "seconds_to_update_completed": round(completed, 3),
                }
                print(json.dumps(result), flush=True)
                results.append(result)
            client.request("DELETE", f"/api/v1/services/{name}")
            wait_for(lambda: _gone(client, name), f"{name} removed", self.args.timeout)
        if executor == "process":
            wait_for(lambda: not self.task_processes(name), f"{name}'s processes gone", self.args.timeout)
        return results

    def wait_rolled(
        self, client: Client, name: str, version: int, replicas: int, start: float | None
    ) -> tuple[float, float, int]:
        """Until every slot runs the new spec and the update (if any) is over: (seconds to the first,
        seconds to the second, the spec version)."""
        began = time.monotonic() if start is None else start
        deadline = began + self.args.timeout
        running_at: float | None = None
        while time.monotonic() < deadline:
            service = client.get(f"/api/v1/services/{name}", dict)["service"]
            tasks = client.get(f"/api/v1/services/{name}/tasks", list, all=False)
            now = time.monotonic()
            current = service["spec_version"]
            on_spec = [t for t in tasks if t["state"] == "running" and t["spec_version"] == current]
            if current >= version and len(on_spec) == replicas and running_at is None:
                running_at = now
            status = (service.get("update_status") or {}).get("state")
            if running_at is not None and (start is None or status == "completed"):
                return running_at - began, now - began, current
            if status in ("paused", "rollback_started", "rollback_paused"):
                raise RuntimeError(f"the update of {name} stopped: {service['update_status']['message']}")
            time.sleep(POLL_S)
        raise TimeoutError(f"{name} not rolled within {self.args.timeout} s")

    def task_processes(self, service: str) -> list[psutil.Process]:
        found = []
        for process in processes_under(self.root):
            with contextlib.suppress(psutil.Error):
                if process.environ().get("TREEHERD_SERVICE") == service:
                    found.append(process)
        return found

    # ---- 2. traffic ------------------------------------------------------------------------------
    def traffic(self) -> list[dict[str, Any]]:
        replicas = self.args.traffic_replicas
        self.gateway = Gateway(self.manager.url, self.root / "nginx")
        self.gateway.start()
        health = HealthCheck(kind="http", interval_s=0.2, timeout_s=1.0, retries=1)
        web = TaskSpec(
            command=[sys.executable, "-c", SERVER],
            ports=[PortSpec(name="http")],
            restart=RestartPolicy(delay_s=0.0),
            health=health,
            placement=Placement(constraints=["node.labels.executor==process"]),
        )
        app = TaskSpec(
            command=["sleep", "3600"],
            depends_on=[Dependency(service="web")],
            placement=Placement(constraints=["node.hostname==host-a"]),
        )
        results = []
        with self.client() as client:
            client.request("POST", "/api/v1/domains", {"name": DOMAIN, "ports": [{"port": self.domain_port}]})
            client.request("POST", "/api/v1/nodes", NodeCreate(path="bench.web"))
            client.request("POST", "/api/v1/nodes/bench.web/routes", {"domain": DOMAIN, "uri": "/"})
            for name, node, count, spec in (("web", "bench.web", replicas, web), ("app", "bench", 1, app)):
                client.request(
                    "POST", "/api/v1/services", ServiceCreate(name=name, node=node, replicas=count, task=spec)
                )
            local_port = int(
                wait_for(
                    lambda: client.get("/api/v1/services/web", dict)["service"]["local_port"],
                    "web's local port",
                    30,
                )
            )
            self.wait_serving(client, local_port, replicas)
            limit = 60.0 + 60.0 * 5
            edge = Load("edge", self.domain_port, DOMAIN, self.args.interval, limit)
            dependency = Load("dependency", local_port, None, self.args.interval, limit)
            for thread in (edge, dependency):
                thread.start()
            try:
                for scenario, change in (
                    ("update, start-first, parallelism 1", {"update": {"parallelism": 1, "order": "start-first"}}),
                    ("update, stop-first, parallelism 1", {"update": {"parallelism": 1, "order": "stop-first"}}),
                    ("update, stop-first, parallelism 0 (all at once)", {"update": {"parallelism": 0, "order": "stop-first"}}),
                    (f"scale down {replicas} -> {max(1, replicas // 2)}", {"replicas": max(1, replicas // 2)}),
                    (f"scale up {max(1, replicas // 2)} -> {replicas}", {"replicas": replicas}),
                ):  # fmt: skip
                    results.append(
                        self.traffic_change(client, scenario, change, web, edge, dependency, local_port)
                    )
            finally:
                for thread in (edge, dependency):
                    thread.stopped.set()
                    thread.join(10)
        return results

    def traffic_change(
        self,
        client: Client,
        scenario: str,
        change: dict[str, Any],
        web: TaskSpec,
        edge: Load,
        dependency: Load,
        local_port: int,
    ) -> dict[str, Any]:
        before = client.get("/api/v1/services/web", dict)["service"]
        replicas = change.get("replicas", before["replicas"])
        body = dict(change)
        if "update" in body:
            self.edits += 1
            body["update"] = {**body["update"], "monitor_s": self.args.traffic_monitor}
            body["task"] = {**_fields(web), "env": {"EDIT": str(self.edits)}}
        time.sleep(1.0)
        start, wall_start = time.monotonic(), time.time()
        client.request("PATCH", "/api/v1/services/web", body)
        if "update" in body:
            seconds = self.wait_rolled(client, "web", before["spec_version"] + 1, replicas, start)[1]
        else:
            wait_for(
                lambda: len(client.get("/api/v1/endpoints/web", list)) == replicas,
                "web's endpoints",
                self.args.timeout,
            )
            wait_for(
                lambda: len(self.task_processes("web")) == replicas, "web's processes", self.args.timeout
            )
            seconds = time.monotonic() - start
        self.wait_serving(client, local_port, replicas)
        time.sleep(1.0)  # requests right after the change count too
        end, wall_end = time.monotonic(), time.time()
        edge_failed, edge_total = edge.failures(start, end)
        dep_failed, dep_total = dependency.failures(start, end)
        result = {
            "scenario": scenario,
            "replicas_after": replicas,
            "seconds": round(seconds, 3),
            "edge_failed": edge_failed,
            "edge_requests": edge_total,
            "dependency_failed": dep_failed,
            "dependency_requests": dep_total,
            "edge_retried_by_nginx": self.retried(wall_start, wall_end),
        }
        print(json.dumps(result), flush=True)
        return result

    def retried(self, start: float, end: float) -> int:
        """Requests nginx sent to a task that no longer answered and then to another (the client saw
        only the second answer), from the gateway's access log: its upstream_status lists both."""
        count = 0
        for log in self.root.rglob(f"{DOMAIN}_access.log"):
            for line in log.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(line)
                    if start <= float(entry["msec"]) <= end and "," in entry["upstream_status"]:
                        count += 1
        return count

    def wait_serving(self, client: Client, local_port: int, replicas: int) -> None:
        def serving() -> bool:
            return (
                len(client.get("/api/v1/endpoints/web", list)) == replicas
                and all(http_get(self.domain_port, DOMAIN) == 200 for _ in range(4))
                and all(http_get(local_port) == 200 for _ in range(4))
            )

        wait_for(serving, "web to serve on both paths", self.args.timeout, poll_s=0.2)

    # ---- the end -----------------------------------------------------------------------------------
    def stop(self) -> int:
        """Stop everything cleanly; then count (and kill) what is still there."""
        with contextlib.suppress(Exception), self.client() as client:
            for name in ("app", "web"):
                client.request("DELETE", f"/api/v1/services/{name}")
            wait_for(
                lambda: not self.task_processes("web") and not self.task_processes("app"), "tasks gone", 20
            )
        nginx = self.gateway.nginx_pid() if self.gateway is not None else None
        if self.gateway is not None:
            self.gateway.stop()
        for agent in self.agents:
            agent.stop()
        self.manager.stop()
        if nginx is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(nginx).terminate()
                psutil.Process(nginx).wait(10)
        left = processes_under(self.root)
        for process in left:
            with contextlib.suppress(psutil.Error):
                print(f"left running: {process.pid} {' '.join(process.cmdline())[:100]}", flush=True)
        reap_processes_under(self.root)
        return len(left) + self.end_listeners()

    def end_listeners(self) -> int:
        victims = []
        for c in psutil.net_connections(kind="tcp"):
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.domain_port:
                with contextlib.suppress(psutil.Error):
                    victims.append(psutil.Process(c.pid))
                    victims[-1].kill()
        psutil.wait_procs(victims, timeout=10)
        return len(victims)


def _fields(spec: TaskSpec) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.to_builtins(spec)
    return fields


def _gone(client: Client, name: str) -> bool:
    return all(s["service"]["name"] != name for s in client.get("/api/v1/services", list))


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roll_ax, traffic_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    rolls = record["rolls"]
    parallelisms = list(dict.fromkeys(r["parallelism"] for r in rolls))
    executors = list(dict.fromkeys(r["executor"] for r in rolls))
    width = 0.8 / max(1, len(executors))
    for i, executor in enumerate(executors):
        values = [
            next((r["seconds_to_update_completed"] for r in rolls if r["executor"] == executor and r["parallelism"] == p), 0)
            for p in parallelisms
        ]  # fmt: skip
        bars = roll_ax.bar([x + i * width for x in range(len(parallelisms))], values, width, label=executor)
        roll_ax.bar_label(bars, fmt="%.1f", fontsize=8)
    roll_ax.set_xticks([x + width * (len(executors) - 1) / 2 for x in range(len(parallelisms))],
                       [f"parallelism {p}" + (" (all)" if p == 0 else "") for p in parallelisms])  # fmt: skip
    roll_ax.set_ylabel("seconds, PATCH -> update completed")
    replicas = rolls[0]["replicas"] if rolls else 0
    roll_ax.set_title(
        f"Rolling {replicas} replicas (stop-first, monitor {record['parameters']['monitor_s']:g} s)"
    )
    roll_ax.legend()
    traffic = record["traffic"]
    x = range(len(traffic))
    traffic_ax.bar([i - 0.2 for i in x], [r["edge_failed"] for r in traffic], 0.4, label="edge (nginx)")
    traffic_ax.bar(
        [i + 0.2 for i in x], [r["dependency_failed"] for r in traffic], 0.4, label="dependency (haproxy)"
    )
    traffic_ax.set_xticks(list(x), [r["scenario"].replace(", ", "\n", 2) for r in traffic], fontsize=7)
    traffic_ax.set_ylabel("failed requests")
    traffic_ax.set_title(
        f"Failed requests under steady load, {record['parameters']['traffic_replicas']} replicas"
    )
    traffic_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--parallelism", default="1,10,0", help="comma-separated update parallelisms to time")
    parser.add_argument("--executors", default="hollow,process", help="comma-separated: hollow, process")
    parser.add_argument("--monitor", type=float, default=0.1, help="update monitor (s) of the timed rolls")
    parser.add_argument("--traffic-replicas", type=int, default=4, help="0: no traffic run")
    parser.add_argument("--traffic-monitor", type=float, default=0.5, help="update monitor (s) under traffic")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between requests on each path")
    parser.add_argument("--timeout", type=float, default=180.0, help="for each wait")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.parallelism = [int(p) for p in args.parallelism.split(",") if p]
    args.executors = [e for e in args.executors.split(",") if e]
    if unknown := set(args.executors) - set(EXECUTORS):
        parser.error(f"unknown executors {sorted(unknown)}: choose from {', '.join(EXECUTORS)}")
    info = machine_info()
    started = time.monotonic()
    rolls: list[dict[str, Any]] = []
    traffic: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="treeherd-rolling-") as tmp:
        run = Run(Path(tmp), args)
        try:
            run.start()
            for executor in args.executors:
                rolls += run.rolls(executor)
            if args.traffic_replicas:
                traffic = run.traffic()
        finally:
            left = run.stop()
            print(f"processes left after the clean stop (killed now): {left}", flush=True)
    record = {
        "benchmark": "rolling",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "command": "benchmarks/rolling.py " + " ".join(sys.argv[1:]),
        "parameters": {
            "replicas": args.replicas, "parallelism": args.parallelism, "executors": args.executors,
            "monitor_s": args.monitor, "traffic_replicas": args.traffic_replicas,
            "traffic_monitor_s": args.traffic_monitor, "interval_s": args.interval,
        },
        "rolls": rolls,
        "traffic": traffic,
        "processes_left": left,
        "seconds_total": round(time.monotonic() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rolling.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out / "rolling.png")
    print(f"wrote {args.out / 'rolling.json'} and {args.out / 'rolling.png'} ({record['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
