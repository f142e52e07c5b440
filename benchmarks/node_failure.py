#!/usr/bin/env python3
"""Node failure: how long until a node that stops answering is marked down and its tasks run elsewhere,
with a heartbeat period of 1 s; and whether any node is marked down falsely while the machine runs at
100 % CPU from other work.

Starts, in a temporary directory on 127.0.0.1: a manager (SQLite), the cluster's heartbeat period set to
`--heartbeat-period` (1 s; epsilon `--heartbeat-epsilon`, 0.1 s), `--agents` agents (separate processes, hollow executor) and a service of
`--replicas` hollow tasks spread over them. The brake on mass node loss (more than 10 % of the nodes down
within `node_loss_hold_s`, 60 s by default, holds replacements) would take the runs, seconds apart, for
one loss of several nodes: its window is set to `--loss-window` (5 s) so that each run is judged alone. A thread follows the manager's event stream (kind
`machine`) and notes when each machine's agent changes state. Each run freezes (SIGSTOP) one agent that
runs tasks: a host that hangs or loses power, whose TCP connection stays open while it sends nothing.
Measured from the freeze:
- `to_down_s`: until the event stream says its agent is down (the dispatcher's grace: 3 periods, plus
  the epsilon);
- `to_replaced_s`: until every slot of the service has a running task on another node.
The agent is then resumed (SIGCONT): it comes back, stops the tasks that were replaced, and the next run
starts once every agent is ready and every slot runs once.

With `--hollow-nodes N`, N more agents (hollow, in `--hollow-procs` processes of their own, the
schedule benchmark's) join the cluster before the runs and heartbeat at the same period: the load of a
large cluster on the dispatcher. They run no task: the service is constrained to the real agents (label
`probe=yes`), so each run still freezes a real agent process with tasks on it.

Then the load phase: `--burners` processes (default one per CPU) spin at 100 % CPU for `--load-seconds`
while the agents and the manager keep their heartbeats; every agent that goes down meanwhile is a false
down (the dispatcher's lateness rule, which moves deadlines by its own lateness, is what prevents them).

Writes OUT/node_failure.json and OUT/node_failure.png.

    .venv/bin/python benchmarks/node_failure.py              # 10 runs and 30 s of load, ~2 min
    .venv/bin/python benchmarks/node_failure.py --runs 3 --load-seconds 10
    .venv/bin/python benchmarks/node_failure.py --hollow-nodes 4990 --tag 5000   # 5,000 nodes in all
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import distribution, machine_info
from schedule_fleet import Fleet
from treeherd.model.requests import ClusterUpdate, MachineUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import Placement, RestartPolicy, TaskSpec
from treeherd.testing.processes import AgentProcess, ManagerProcess, reap_processes_under
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client, ClientError

SERVICE = "probe"


class AgentStates:
    """Follows the event stream: each machine's agent state changes, with the time they were seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.changes: list[tuple[float, str, str]] = []  # (monotonic time, hostname, new state)
        self.state: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> AgentStates:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _follow(self) -> None:
        since = None
        while not self._stop.is_set():
            try:
                with Client(self.url, timeout=5) as client:
                    query: dict[str, Any] = {"kind": "machine", "keepalive": 0.5}
                    if since is not None:
                        query["since"] = since
                    for _, data, event_id in client.stream("/api/v1/events", query, read_timeout=5):
                        if self._stop.is_set():
                            return
                        since = int(event_id) if event_id else since
                        self._note(json.loads(data))
            except (ClientError, OSError, ValueError):
                time.sleep(0.1)

    def _note(self, event: dict[str, Any]) -> None:
        machine = event.get("object", {})
        agent = machine.get("agent") or {}
        hostname, state = machine.get("hostname", ""), agent.get("state", "")
        if state and self.state.get(hostname) != state:
            self.state[hostname] = state
            self.changes.append((time.monotonic(), hostname, state))

    def first(self, hostname: str, state: str, after: float) -> float | None:
        return next((t for t, h, s in self.changes if h == hostname and s == state and t >= after), None)

    def downs(self, after: float, before: float) -> list[str]:
        return [h for t, h, s in self.changes if s == "down" and after <= t <= before]


class HollowNodes:
    """`count` hollow agents in `procs` processes of their own (the schedule benchmark's `Fleet`), run by
    an event loop in a thread: `start()` (bounded by `timeout`), then `stop()`, which ends them by pid."""

    def __init__(self, url: str, count: int, procs: int, work: Path, timeout: float) -> None:
        self.url, self.count, self.procs, self.work, self.timeout = url, count, procs, work, timeout
        self.hostnames = [f"hollow-{i:05d}" for i in range(count)]
        self.fleet = Fleet(procs, work)
        self.pids: list[int] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> HollowNodes:
        self._thread.start()
        if not self._ready.wait(self.timeout + 10) or self._error is not None:
            self.stop()
            raise RuntimeError(f"the hollow agents did not start: {self._error or 'timed out'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        self.fleet.kill()

    def leftovers(self) -> int:
        return self.fleet.leftovers()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to the caller waiting in start()
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        try:
            await self.fleet.start(
                self.url, self.hostnames, self.work / "data", db_threads=0, db_inline=True,
                switch_interval=None, ready_timeout=self.timeout,
            )  # fmt: skip
            self.pids = self.fleet.pids
            self._ready.set()
            await self._stop.wait()
        finally:
            await self.fleet.stop()


def tasks(url: str) -> list[dict[str, Any]]:
    try:
        with Client(url, timeout=5) as client:
            found: list[dict[str, Any]] = client.get(f"/api/v1/services/{SERVICE}/tasks", list)
            return found
    except (ClientError, OSError):
        return []


def running_by_slot(url: str) -> dict[int, list[str]]:
    """The nodes each slot has a running task on (desired running)."""
    slots: dict[int, list[str]] = {}
    for task in tasks(url):
        if task["desired_state"] == "running" and task["state"] == "running":
            slots.setdefault(task["slot"], []).append(task.get("hostname") or "")
    return slots


def converged(url: str, replicas: int, states: AgentStates, hosts: list[str]) -> bool:
    slots = running_by_slot(url)
    return (
        len(slots) == replicas
        and all(len(nodes) == 1 for nodes in slots.values())
        and all(states.state.get(h) == "ready" for h in hosts)
    )


def one_run(
    index: int,
    url: str,
    agents: list[AgentProcess],
    states: AgentStates,
    replicas: int,
    timeout: float,
    loss_window: float,
) -> dict[str, Any]:
    hosts = [a.hostname for a in agents]
    wait_for(
        lambda: converged(url, replicas, states, hosts), "every agent ready, every slot running", timeout
    )
    # The previous run's loss out of the brake's window first: each run is one node lost, alone.
    last_down = max((t for t, _, state in states.changes if state == "down"), default=0.0)
    time.sleep(max(0.0, last_down + loss_window + 0.5 - time.monotonic()))
    slots = running_by_slot(url)
    busy = sorted({nodes[0] for nodes in slots.values()})
    victim = next(a for a in agents if a.hostname == busy[index % len(busy)])
    on_victim = sorted(slot for slot, nodes in slots.items() if nodes == [victim.hostname])
    assert victim.process is not None
    victim.process.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    to_replaced = None
    try:
        while time.monotonic() - frozen < timeout:
            now = running_by_slot(url)
            if all(any(n != victim.hostname for n in now.get(slot, [])) for slot in on_victim):
                to_replaced = time.monotonic() - frozen
                break
            time.sleep(0.02)
    finally:
        victim.process.send_signal(signal.SIGCONT)
    down_at = states.first(victim.hostname, "down", frozen)
    result = {
        "run": index,
        "node": victim.hostname,
        "tasks_on_node": len(on_victim),
        "to_down_s": None if down_at is None else round(down_at - frozen, 3),
        "to_replaced_s": None if to_replaced is None else round(to_replaced, 3),
    }
    print(json.dumps(result), flush=True)
    return result


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def load_phase(states: AgentStates, burners: int, seconds: float) -> dict[str, Any]:
    """`burners` processes at 100 % CPU for `seconds`: the agents marked down meanwhile (none should be)."""
    start = time.monotonic()
    busy = [multiprocessing.Process(target=_spin, args=(seconds,)) for _ in range(burners)]
    for process in busy:
        process.start()
    for process in busy:
        process.join(seconds + 30)
    time.sleep(3.0)  # a down decided at the end of the load is still counted
    false_downs = states.downs(start, time.monotonic())
    result = {
        "burners": burners,
        "seconds": seconds,
        "false_downs": len(false_downs),
        "down_nodes": false_downs,
    }
    print(json.dumps(result), flush=True)
    return result


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [r["run"] for r in runs]
    for key, label, marker in (
        ("to_down_s", "node down", "o"),
        ("to_replaced_s", "tasks running elsewhere", "^"),
    ):
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in runs], marker, label=label)
    ax.axhline(record["parameters"]["goal_s"], color="grey", linestyle="--", label="goal")
    ax.set_xlabel("run")
    ax.set_ylabel("seconds after the node froze")
    load = record["load"]
    ax.set_title(
        f"Node failure, {record['parameters']['agents'] + record['parameters']['hollow_nodes']:,} nodes,"
        f" heartbeat {record['parameters']['heartbeat_period_s']} s"
        f" (false downs at 100 % CPU: {load['false_downs']})"
    )
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--heartbeat-period", type=float, default=1.0)
    parser.add_argument(
        "--heartbeat-epsilon", type=float, default=0.1,
        help="the cluster's heartbeat epsilon (default 0.1 s: the default 0.5 s is half of a 1 s period)",
    )  # fmt: skip
    parser.add_argument("--loss-window", type=float, default=5.0, help="the cluster's node_loss_hold_s")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="for each wait")
    parser.add_argument(
        "--hollow-nodes", type=int, default=0,
        help="more agents, hollow and without tasks, in processes of their own (default 0)",
    )  # fmt: skip
    parser.add_argument("--hollow-procs", type=int, default=2, help="processes for --hollow-nodes")
    parser.add_argument("--tag", default="", help="appended to the output names: node_failure-TAG.*")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    info = machine_info()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="treeherd-node-failure-") as tmp:
        root = Path(tmp)
        manager = ManagerProcess(root / "manager")
        agents: list[AgentProcess] = []
        hollow: HollowNodes | None = None
        left = 0
        try:
            manager.start()
            with Client(manager.url, timeout=10) as client:
                client.request(
                    "PATCH",
                    "/api/v1/cluster",
                    ClusterUpdate(
                        heartbeat_period_s=args.heartbeat_period,
                        heartbeat_epsilon_s=args.heartbeat_epsilon,
                        node_loss_hold_s=args.loss_window,
                    ),
                )
                client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
            with AgentStates(manager.url) as states:
                agents = [
                    AgentProcess(manager.url, root / f"host-{i}", f"host-{i}", executor="hollow").start()
                    for i in range(args.agents)
                ]
                hosts = [a.hostname for a in agents]
                wait_for(
                    lambda: all(states.state.get(h) == "ready" for h in hosts), "agents ready", args.timeout
                )
                with Client(manager.url, timeout=10) as client:
                    for host in hosts:  # the probe's tasks go to these agents only
                        client.request(
                            "PATCH", f"/api/v1/machines/{host}", MachineUpdate(labels={"probe": "yes"})
                        )
                if args.hollow_nodes:
                    hollow = HollowNodes(
                        manager.url, args.hollow_nodes, args.hollow_procs, root / "hollow", args.timeout * 3
                    ).start()
                    names = hollow.hostnames
                    wait_for(
                        lambda: sum(1 for h in names if states.state.get(h) == "ready") == len(names),
                        "hollow agents ready",
                        args.timeout * 3,
                    )
                spec = TaskSpec(
                    command=["hollow"],
                    restart=RestartPolicy(delay_s=0),
                    placement=Placement(constraints=["node.labels.probe==yes"]),
                )
                with Client(manager.url, timeout=10) as client:
                    client.request(
                        "POST", "/api/v1/services",
                        ServiceCreate(name=SERVICE, node="bench", replicas=args.replicas, task=spec),
                    )  # fmt: skip
                for index in range(1, args.runs + 1):
                    runs.append(
                        one_run(
                            index, manager.url, agents, states, args.replicas, args.timeout, args.loss_window
                        )
                    )
                wait_for(
                    lambda: converged(manager.url, args.replicas, states, hosts),
                    "converged again",
                    args.timeout,
                )
                load = load_phase(states, args.burners, args.load_seconds)
        finally:
            if hollow is not None:
                hollow.stop()
                left += hollow.leftovers()
            for agent in agents:
                agent.kill()
            manager.kill()
            left += reap_processes_under(root)
    summary = {
        key: distribution([r[key] for r in runs if r[key] is not None])
        for key in ("to_down_s", "to_replaced_s")
    }
    record = {
        "benchmark": "node_failure",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "command": "benchmarks/node_failure.py " + " ".join(sys.argv[1:]),
        "parameters": {"runs": args.runs, "agents": args.agents, "replicas": args.replicas,
                       "hollow_nodes": args.hollow_nodes, "hollow_procs": args.hollow_procs if args.hollow_nodes else 0,
                       "heartbeat_period_s": args.heartbeat_period, "heartbeat_epsilon_s": args.heartbeat_epsilon, "grace_periods": 3, "goal_s": 3.5,
                       "node_loss_hold_s": args.loss_window},
        "runs": runs,
        "summary": summary,
        "load": load,
        "failed_runs": sum(1 for r in runs if r["to_replaced_s"] is None),
        "processes_left": left,
        "seconds_total": round(time.monotonic() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "node_failure" + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png ({record['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
