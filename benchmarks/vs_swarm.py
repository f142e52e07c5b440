#!/usr/bin/env python3
"""treeherd's docker executor against Docker swarm mode, on the same dockerd in one run.

Uses the dockerd that answers (DOCKER_HOST, else the standard socket) or starts one of its own in a
temporary directory (`treeherd.testing.docker.Dockerd`), imports a busybox image from Debian's
busybox-static package (no registry: both sides run it by its ID), and sets up both systems there:

- **swarm**: `docker swarm init --advertise-addr 127.0.0.1`; services made with `docker service create
  --no-resolve-image --network host --restart-delay 0s`; left with `docker swarm leave --force` at the end;
- **treeherd**: a real manager and one agent with `--executor docker` (both on 127.0.0.1, in the
  temporary directory); services made through the HTTP API with restart delay 0.

Then `--runs` times, alternating the two systems so they share the machine's noise, each:

1. creates a service of `--replicas` replicas of a shell loop that exits on SIGTERM (stop grace 1 s on
   both) and measures the time until dockerd shows that many of its containers running
   (`create_to_running_s`, counted by the service's label on both sides, every 0.1 s, through the
   Engine API's container list on dockerd's socket: a `docker ps` is a process of its own, about 17
   ms of CPU each, and polled as often it took about 7 % of this 2-core machine from both creates);
2. kill -9 of one container's process (its host pid from `docker inspect`): the time until the service
   has its full count of running containers again without that one (`kill_to_replacement_s`);
3. removes the service: the time until none of its containers is left, running or not
   (`rm_to_gone_s`).

Writes `OUT/vs_swarm.json` and `OUT/vs_swarm.png` and prints a summary. Everything it made is removed at
the end (the services, the swarm, the image, the treeherd processes, a dockerd it started). Every wait is
bounded.

    .venv/bin/python benchmarks/vs_swarm.py                       # 200 replicas, 3 runs each
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchlib import machine_info
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import RestartPolicy, TaskSpec
from treeherd.testing.docker import Dockerd, busybox_image
from treeherd.testing.processes import AgentProcess, ManagerProcess, reap_processes_under
from treeherd.transport.client import Client

POLL_S = 0.1
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
METRICS = ("create_to_running_s", "kill_to_replacement_s", "rm_to_gone_s")


def wait_until(check: Callable[[], Any], what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if found := check():
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        time.sleep(POLL_S)


class ContainerList:
    """dockerd's container list (`GET /containers/json`, what `docker ps` asks) from this process."""

    def __init__(self, host: str) -> None:
        url = urllib.parse.urlsplit(host)
        if url.scheme == "unix":
            self._client = httpx.Client(transport=httpx.HTTPTransport(uds=url.path), base_url="http://docker")
        else:  # tcp://HOST:PORT
            self._client = httpx.Client(base_url=f"http://{url.netloc}")

    def ids(self, label: str, *, running: bool) -> list[str]:
        """The ids of the containers with `label` (KEY=VALUE): those running, or all of them."""
        filters = json.dumps({"label": [label]})
        answer = self._client.get(
            "/containers/json", params={"filters": filters, "all": str(not running).lower()}
        )
        answer.raise_for_status()
        return [container["Id"] for container in answer.json()]

    def close(self) -> None:
        self._client.close()


class System:
    """One side of the comparison: how it makes and removes a service, and how its containers are found."""

    name = ""
    label = ""

    def __init__(self, dockerd: Dockerd, containers: ContainerList) -> None:
        self.dockerd = dockerd
        self._containers = containers

    def create(self, service: str, image: str, replicas: int) -> None:
        raise NotImplementedError

    def remove(self, service: str) -> None:
        raise NotImplementedError

    def containers(self, service: str, *, running: bool) -> list[str]:
        return self._containers.ids(f"{self.label}={service}", running=running)


class Swarm(System):
    name = "swarm"
    label = "com.docker.swarm.service.name"

    def create(self, service: str, image: str, replicas: int) -> None:
        self.dockerd.docker(
            "service", "create", "--detach", "--no-resolve-image", "--name", service,
            "--replicas", str(replicas), "--network", "host", "--restart-delay", "0s",
            "--stop-grace-period", "1s", image, *COMMAND,
        )  # fmt: skip

    def remove(self, service: str) -> None:
        self.dockerd.docker("service", "rm", service)


class Treeherd(System):
    name = "treeherd"
    label = "treeherd.service"

    def __init__(self, dockerd: Dockerd, containers: ContainerList, client: Client) -> None:
        super().__init__(dockerd, containers)
        self.client = client

    def create(self, service: str, image: str, replicas: int) -> None:
        spec = TaskSpec(command=COMMAND, image=image, restart=RestartPolicy(delay_s=0), stop_grace_s=1.0)
        self.client.request(
            "POST",
            "/api/v1/services",
            ServiceCreate(name=service, node="bench", replicas=replicas, task=spec),
        )

    def remove(self, service: str) -> None:
        self.client.request("DELETE", f"/api/v1/services/{service}")


def one_run(system: System, service: str, image: str, args: argparse.Namespace) -> dict[str, float]:
    start = time.monotonic()
    system.create(service, image, args.replicas)
    running = wait_until(
        lambda: (found := system.containers(service, running=True)) and len(found) == args.replicas and found,
        f"{args.replicas} running containers",
        args.timeout,
    )
    create_to_running = time.monotonic() - start

    victim = running[0]
    pid = int(system.dockerd.docker("inspect", "--format", "{{.State.Pid}}", victim).strip())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            (found := system.containers(service, running=True))
            and len(found) == args.replicas
            and victim not in found
        ),
        "a replacement running",
        args.timeout,
    )
    kill_to_replacement = time.monotonic() - killed

    removed = time.monotonic()
    system.remove(service)
    wait_until(lambda: not system.containers(service, running=False), "every container gone", args.timeout)
    rm_to_gone = time.monotonic() - removed
    return {
        "create_to_running_s": round(create_to_running, 3),
        "kill_to_replacement_s": round(kill_to_replacement, 3),
        "rm_to_gone_s": round(rm_to_gone, 3),
    }


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

    labels = {
        "create_to_running_s": "create -> all running",
        "kill_to_replacement_s": "kill -9 -> replacement running",
        "rm_to_gone_s": "service rm -> all gone",
    }
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for offset, (system, color) in ((-0.18, ("swarm", "tab:blue")), (0.18, ("treeherd", "tab:orange"))):
        for x, key in enumerate(METRICS):
            values = [run[key] for run in report["runs"][system]]
            ax.scatter(
                [x + offset] * len(values), values, alpha=0.7, color=color, label=system if x == 0 else None
            )
            ax.hlines(statistics.median(values), x + offset - 0.12, x + offset + 0.12, colors="black")
    ax.set_xticks(range(len(METRICS)), [labels[key] for key in METRICS], fontsize=8)
    ax.set_ylabel("seconds")
    params = report["parameters"]
    ax.set_title(
        f"docker swarm mode vs treeherd's docker executor on one dockerd: {params['replicas']} replicas,"
        f" {params['runs']} runs each (line: median)",
        fontsize=9,
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--replicas", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0, help="for each wait")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--only", choices=["swarm", "treeherd"], help="measure one side only (no JSON written)"
    )
    parser.add_argument("--keep", type=Path, help="copy the agent's and manager's logs here at the end")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {"swarm": [], "treeherd": []}
    machine = machine_info()  # before the runs: their own containers would count in the load average
    engine: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="treeherd-vs-swarm-") as tmp, Dockerd() as dockerd:
        root = Path(tmp)
        image = busybox_image(dockerd, root / "image")
        swarm_joined = False
        manager = ManagerProcess(root / "manager")
        agent: AgentProcess | None = None
        containers = ContainerList(dockerd.host)
        os.environ["DOCKER_HOST"] = dockerd.host  # for the agent
        try:
            engine = json.loads(dockerd.docker("version", "--format", "{{json .Server}}"))
            dockerd.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
            swarm_joined = True
            manager.start()
            agent = AgentProcess(manager.url, root / "agent", "bench-docker", executor="docker").start()
            with Client(manager.url, timeout=30) as client:
                client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
                wait_until(
                    lambda: any(
                        m["agent"]["state"] == "ready"
                        for m in client.get("/api/v1/machines", list, agents=True)
                    ),
                    "the agent ready",
                    args.timeout,
                )
                systems: list[System] = [Swarm(dockerd, containers), Treeherd(dockerd, containers, client)]
                systems = [system for system in systems if args.only in (None, system.name)]
                for index in range(args.runs):
                    for system in systems if index % 2 == 0 else systems[::-1]:
                        result = one_run(system, f"bench-{system.name}-{index}", image, args)
                        runs[system.name].append(result)
                        print(f"{system.name} run {index + 1}: {json.dumps(result)}", flush=True)
        finally:
            containers.close()
            if agent is not None:
                agent.kill()
            manager.kill()
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in root.glob("*.log"):
                    (args.keep / log.name).write_bytes(log.read_bytes())
            reap_processes_under(root)
            left = dockerd.docker("ps", "-aq", "--filter", "label=treeherd.service", check=False).split()
            if left:
                dockerd.docker("rm", "-f", *left, check=False)
            if swarm_joined:
                dockerd.docker("swarm", "leave", "--force", check=False)
            dockerd.docker("rmi", "-f", image, check=False)

    if args.only is not None:
        return 0
    summary = {
        system: {key: summarize([run[key] for run in done]) for key in METRICS}
        for system, done in runs.items()
    }
    report = {
        "benchmark": "vs_swarm",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "engine": {"version": engine.get("Version", ""), "api": engine.get("ApiVersion", "")},
        "parameters": {
            "replicas": args.replicas,
            "runs": args.runs,
            "restart_delay_s": 0.0,
            "stop_grace_s": 1.0,
        },
        "runs": runs,
        "summary": summary,
        "ratio_treeherd_to_swarm": {
            key: round(summary["treeherd"][key]["median"] / summary["swarm"][key]["median"], 3)
            for key in METRICS
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_swarm.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "vs_swarm.png")
    for key in METRICS:
        print(
            f"{key}: swarm {summary['swarm'][key]['median']} s, treeherd {summary['treeherd'][key]['median']} s"
            f" (treeherd / swarm {report['ratio_treeherd_to_swarm'][key]})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
