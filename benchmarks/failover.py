#!/usr/bin/env python3
"""Manager failover: how long a cluster of three managers on etcd goes without a leader, and without
placing work, when the leader manager is killed.

Starts, in a temporary directory on 127.0.0.1: a 3-member etcd, three managers on it (`--store etcd://`,
fixed ports) and `--agents` agents with the hollow executor that know all three managers. Each run:
find the leader, kill -9 it, then at once ask the surviving managers to create a one-replica service
(refused with 503 until a leader exists; retried every `--poll` s). Measured from the kill:
- `to_leader_s`: until the surviving managers agree on a new leader (`/api/v1/managers`);
- `to_placement_s`: until the new service's task is placed on a machine (the new leader's orchestrator,
  allocator and scheduler ran, on agents that came back to it).
The killed manager is restarted on its data and port (as a follower) before the next run. Writes
OUT/failover.json and OUT/failover.png.

    .venv/bin/python benchmarks/failover.py              # 5 runs, ~1 min
    .venv/bin/python benchmarks/failover.py --runs 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import distribution, machine_info
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import TaskSpec
from treeherd.testing.etcd import EtcdCluster
from treeherd.testing.ports import free_port
from treeherd.testing.processes import AgentProcess, ManagerProcess, reap_processes_under
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client, ClientError


def leader_url(managers: list[ManagerProcess]) -> str | None:
    """The leader every live manager names, once they agree."""
    named = set()
    for manager in managers:
        if manager.process is None or manager.process.poll() is not None:
            continue
        try:
            with Client(manager.url, timeout=2) as client:
                listed = client.get("/api/v1/managers", list)
        except (ClientError, OSError):
            return None
        named.add(next((m["url"] for m in listed if m["role"] == "leader"), None))
    live = {m.url for m in managers if m.process is not None and m.process.poll() is None}
    return named.pop() if len(named) == 1 and named <= live else None


def placed(urls: str, service: str) -> bool:
    try:
        with Client(urls, timeout=2) as client:
            tasks = client.get(f"/api/v1/services/{service}/tasks", list)
    except (ClientError, OSError):
        return False
    return any(t.get("hostname") for t in tasks)


def one_run(index: int, managers: list[ManagerProcess], poll_s: float, timeout_s: float) -> dict[str, Any]:
    url = wait_for(lambda: leader_url(managers), "a leader", timeout_s)
    leader = next(m for m in managers if m.url == url)
    rest = [m for m in managers if m is not leader]
    urls = ",".join(m.url for m in rest)
    service = f"probe-{index}"
    leader.kill()
    killed = time.monotonic()
    to_leader = to_write = to_placement = None
    while time.monotonic() - killed < timeout_s:
        now = time.monotonic() - killed
        if to_leader is None and leader_url(rest) is not None:
            to_leader = time.monotonic() - killed
        if to_write is None:
            try:
                with Client(urls, timeout=5) as client:
                    client.request(
                        "POST",
                        "/api/v1/services",
                        ServiceCreate(name=service, node="bench", replicas=1, task=TaskSpec(command=["run"])),
                    )
                to_write = time.monotonic() - killed
            except ClientError:
                pass
        if to_write is not None and placed(urls, service):
            to_placement = time.monotonic() - killed
        if to_leader is not None and to_placement is not None:
            break
        time.sleep(max(0.0, poll_s - (time.monotonic() - killed - now)))
    leader.start()  # back on its data and port, as a follower
    result = {
        "run": index,
        "to_leader_s": _r(to_leader),
        "to_write_s": _r(to_write),
        "to_placement_s": _r(to_placement),
    }
    print(json.dumps(result), flush=True)
    return result


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [r["run"] for r in runs]
    for key, label, marker in (
        ("to_leader_s", "new leader", "o"),
        ("to_write_s", "first write accepted", "s"),
        ("to_placement_s", "first placement", "^"),
    ):
        ax.plot(xs, [r[key] if r[key] is not None else float("nan") for r in runs], marker, label=label)
    ax.set_xlabel("run")
    ax.set_ylabel("seconds after kill -9 of the leader")
    ax.set_title("Manager failover: 3 managers on a 3-member etcd")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between checks after the kill")
    parser.add_argument("--timeout", type=float, default=60.0, help="for each wait")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    info = machine_info()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="treeherd-failover-") as tmp:
        root = Path(tmp)
        etcd = EtcdCluster(root / "etcd").start()
        store = etcd.url("/bench")
        managers = [
            ManagerProcess(
                root / f"manager-{i}", listen=f"127.0.0.1:{free_port()}", extra_args=("--store", store)
            )
            for i in range(3)
        ]
        agents: list[AgentProcess] = []
        try:
            for manager in managers:
                manager.start()
            urls = ",".join(m.url for m in managers)
            with Client(urls, timeout=10) as client:
                client.request(
                    "PATCH", "/api/v1/cluster", ClusterUpdate(heartbeat_period_s=1.0, heartbeat_epsilon_s=0.2)
                )
                client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
            agents = [
                AgentProcess(urls, root / f"host-{i}", f"host-{i}", executor="hollow").start()
                for i in range(args.agents)
            ]
            for index in range(1, args.runs + 1):
                runs.append(one_run(index, managers, args.poll, args.timeout))
        finally:
            for agent in agents:
                agent.kill()
            for manager in managers:
                manager.kill()
            etcd.stop()
            left = reap_processes_under(root)
    summary = {
        key: distribution([r[key] for r in runs if r[key] is not None])
        for key in ("to_leader_s", "to_write_s", "to_placement_s")
    }
    record = {
        "benchmark": "failover",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "command": "benchmarks/failover.py " + " ".join(sys.argv[1:]),
        "parameters": {"runs": args.runs, "agents": args.agents, "poll_s": args.poll, "etcd_members": 3,
                       "managers": 3, "election_ttl_s": 3},
        "runs": runs,
        "summary": summary,
        "failed_runs": sum(1 for r in runs if r["to_placement_s"] is None),
        "processes_left": left,
        "seconds_total": round(time.monotonic() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out / "failover.png")
    print(f"wrote {args.out / 'failover.json'} and {args.out / 'failover.png'} ({record['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
