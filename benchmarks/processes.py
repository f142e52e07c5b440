#!/usr/bin/env python3
"""Real processes on real agents: how long a service takes to run, and a dead task to be replaced.

Starts a real manager (`ManagerProcess`, SQLite store, default cluster settings) and `--agents` real
agent processes (`treeherd agent`, process executor, own data directories), all on 127.0.0.1 in a
temporary directory. Then, `--runs` times:

1. `POST /api/v1/services` with `--replicas` replicas of a small Python HTTP server on an allocated port
   (restart delay `--restart-delay`, default 0 s: the default policy waits 5 s before a restart);
   measures the time until the API shows every task RUNNING (`create_to_running_s`) and until every
   allocated port answers HTTP (`create_to_answering_s`);
2. SIGKILLs one task's process (found in the OS process table by its TREEHERD_TASK_ID) and measures the
   time until the API shows a new task RUNNING in that slot (`death_to_replacement_running_s`) and until
   the new process answers on its port (`death_to_replacement_answering_s`);
3. removes the service and waits until none of its processes is left.

Writes `OUT/processes.json` and `OUT/processes.png` and prints a summary. Every wait is bounded.

    .venv/bin/python benchmarks/processes.py                     # 3 agents, 20 replicas, 5 runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchlib import machine_info
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import PortSpec, RestartPolicy, TaskSpec
from treeherd.testing import waiting
from treeherd.testing.processes import AgentProcess, ManagerProcess, processes_under, reap_processes_under
from treeherd.transport.client import Client

POLL_S = 0.02
SERVER = """
import http.server, os
port = int(os.environ["TREEHERD_PORT_HTTP"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


wait_for = functools.partial(waiting.wait_for, poll_s=POLL_S)


def running(client: Client, service: str) -> list[dict[str, Any]]:
    tasks = client.get(f"/api/v1/services/{service}/tasks", list, all=False)
    return [t for t in tasks if t["state"] == "running"]


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return bool(response.status == 204)
    except OSError:
        return False


def task_process(root: Path, task_id: str) -> psutil.Process | None:
    for process in processes_under(root):
        try:
            if process.environ().get("TREEHERD_TASK_ID") == task_id:
                return process
        except psutil.Error:
            continue
    return None


def one_run(client: Client, root: Path, index: int, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench-{index}"
    spec = TaskSpec(
        command=[sys.executable, "-c", SERVER],
        ports=[PortSpec(name="http")],
        restart=RestartPolicy(delay_s=args.restart_delay),
    )
    start = time.monotonic()
    client.request(
        "POST", "/api/v1/services", ServiceCreate(name=name, node="bench", replicas=args.replicas, task=spec)
    )
    tasks = wait_for(
        lambda: (found := running(client, name)) and len(found) == args.replicas and found,
        f"{args.replicas} running",
        args.timeout,
    )
    create_to_running = time.monotonic() - start
    ports = [t["ports"]["http"] for t in tasks]
    wait_for(lambda: all(answers(p) for p in ports), "every port answering", args.timeout)
    create_to_answering = time.monotonic() - start

    victim = tasks[0]
    process = wait_for(lambda: task_process(root, victim["id"]), "the victim's process", args.timeout)
    killed = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)

    def replacement() -> dict[str, Any] | None:
        for task in running(client, name):
            if task["slot"] == victim["slot"] and task["id"] != victim["id"]:
                return task
        return None

    new = wait_for(replacement, "the replacement running", args.timeout)
    death_to_running = time.monotonic() - killed
    wait_for(lambda: answers(new["ports"]["http"]), "the replacement answering", args.timeout)
    death_to_answering = time.monotonic() - killed

    client.request("DELETE", f"/api/v1/services/{name}")
    wait_for(
        lambda: not any(_env(p).get("TREEHERD_SERVICE") == name for p in processes_under(root)),
        "the service's processes gone",
        args.timeout,
    )
    spread: dict[str, int] = {}
    for task in tasks:
        spread[task["hostname"]] = spread.get(task["hostname"], 0) + 1
    return {
        "create_to_running_s": round(create_to_running, 3),
        "create_to_answering_s": round(create_to_answering, 3),
        "death_to_replacement_running_s": round(death_to_running, 3),
        "death_to_replacement_answering_s": round(death_to_answering, 3),
        "tasks_per_agent": spread,
    }


def _env(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except psutil.Error:
        return {}


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("create_to_running_s", "create -> all RUNNING"),
        ("create_to_answering_s", "create -> all answering"),
        ("death_to_replacement_running_s", "kill -> replacement RUNNING"),
        ("death_to_replacement_answering_s", "kill -> replacement answering"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for x, (key, _label) in enumerate(keys):
        values = [run[key] for run in report["runs"]]
        ax.scatter([x] * len(values), values, alpha=0.7)
        ax.hlines(statistics.median(values), x - 0.25, x + 0.25, colors="black")
    ax.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=8)
    ax.set_ylabel("seconds")
    params = report["parameters"]
    ax.set_title(
        f"treeherd processes: {params['replicas']} replicas on {params['agents']} agents,"
        f" {params['runs']} runs (restart delay {params['restart_delay_s']:g} s; line: median)",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--restart-delay", type=float, default=0.0, help="seconds (the default policy: 5)")
    parser.add_argument("--timeout", type=float, default=60.0, help="for each wait")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="treeherd-processes-") as tmp:
        root = Path(tmp)
        manager = ManagerProcess(root / "manager")
        agents = [
            AgentProcess(manager.url, root / f"agent-{i}", f"bench-{i}", executor="process")
            for i in range(args.agents)
        ]
        runs: list[dict[str, Any]] = []
        try:
            manager.start()
            for agent in agents:
                agent.manager_url = manager.url
                agent.start()
            with Client(manager.url, timeout=30) as client:
                client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
                wait_for(
                    lambda: (
                        len(
                            [
                                m
                                for m in client.get("/api/v1/machines", list, agents=True)
                                if m["agent"]["state"] == "ready"
                            ]
                        )
                        == args.agents
                    ),
                    "agents ready",
                    args.timeout,
                )
                for index in range(args.runs):
                    runs.append(one_run(client, root, index, args))
                    print(f"run {index + 1}: {json.dumps(runs[-1])}", flush=True)
        finally:
            for agent in agents:
                agent.kill()
            manager.kill()
            reap_processes_under(root)

    report = {
        "benchmark": "processes",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "agents": args.agents,
            "replicas": args.replicas,
            "runs": args.runs,
            "restart_delay_s": args.restart_delay,
        },
        "runs": runs,
        "summary": {
            key: summarize([run[key] for run in runs])
            for key in (
                "create_to_running_s",
                "create_to_answering_s",
                "death_to_replacement_running_s",
                "death_to_replacement_answering_s",
            )
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "processes.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "processes.png")
    for key, values in report["summary"].items():
        print(
            f"  {key:36} median {values['median']:.3f} s (min {values['min']:.3f}, max {values['max']:.3f})"
        )
    print(f"wrote {args.out / 'processes.json'} and {args.out / 'processes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
