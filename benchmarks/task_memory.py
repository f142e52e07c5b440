#!/usr/bin/env python3
"""Memory and restart at C1M scale: the manager's RSS with 1,000,000 running tasks on 5,000 nodes, what a
task costs in bytes (and what the retained history costs), and how long a restart on that data set takes.

Builds the data set, in a temporary directory on 127.0.0.1:
1. a real manager (SQLite) is started empty; through its API the cluster's heartbeat period is set to an
   hour (no node goes down while the measurement runs: no agent is connected), a tree node `bench` and
   `--services` services (replicas 0) are made; the manager is stopped (SIGTERM);
2. with the manager stopped, this process opens the same store and writes `--machines` agent machines
   (state ready, as a joined agent's machine is after its registration);
3. `base`: the manager is started on that and left to settle; its RSS is the baseline;
4. the services' replicas are set, and `--tasks` tasks are written in transactions of 5,000 (the
   orchestrator's chunk), each RUNNING on a machine, round robin, sharing its service's spec object (as
   the orchestrator's tasks do); a task carries a short command and two environment variables; then
   50,000 of them have their status changed twice, so that the retained history (the last 100,000
   events) holds 50,000 older copies of tasks besides the live ones;
5. `--restarts` times: the manager is started on the full data set. `to_healthy_s`: until `/healthz`
   answers (the store loaded, the API up); `to_settled_s`: until the manager's CPU stays under 5 % of a
   core for 2 s (its components' first passes over every task done); RSS at that point; the revisions
   the manager wrote meanwhile (each machine marked unknown until its agent comes back); then SIGTERM;
6. in separate processes, the store alone is opened on the data set with the default history (100,000
   events) and with none, and each process's RSS is read after the load: the state's cost per task,
   and the history's.

Not covered: agents reconnecting after the restart (none run here: `schedule.py` covers live agents),
and the orchestrator's kept history of finished tasks (5 per slot by default: a slot with a history
costs up to six tasks).

Writes OUT/task_memory.json and OUT/task_memory.png.

    .venv/bin/python benchmarks/task_memory.py                     # 1,000,000 tasks: ~5 min
    .venv/bin/python benchmarks/task_memory.py --tasks 100000 --machines 1000 --restarts 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psutil

from benchlib import machine_info
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Update
from treeherd.model.requests import ClusterUpdate, NodeCreate, ServiceCreate
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.engine import DEFAULT_HISTORY
from treeherd.store.sqlite import SqliteStore
from treeherd.testing.processes import ManagerProcess, reap_processes_under
from treeherd.transport.client import Client

CHUNK = 5_000  # tasks per transaction, as the orchestrator commits them
HISTORY_TASKS = DEFAULT_HISTORY // 2  # tasks changed twice at the end (see `write_tasks`)
SETTLE_CPU = 0.05  # cores: below this for SETTLE_WINDOW_S, the manager has settled
SETTLE_WINDOW_S = 2.0


class Manager(ManagerProcess):
    """The manager under test (`treeherd manager` on 127.0.0.1:0), its starts and stops timed, its RSS
    and CPU read from the OS."""

    def timed_start(self, timeout: float) -> float:
        """Start it; returns the seconds until /healthz answered 200."""
        started = time.monotonic()
        self.start(timeout=timeout)
        return time.monotonic() - started

    def timed_stop(self, timeout: float = 60.0) -> float:
        """SIGTERM; returns the seconds it took to exit cleanly."""
        started = time.monotonic()
        code = self.stop(timeout=timeout)
        if code != 0:
            raise RuntimeError(f"the manager exited with {code} on SIGTERM: see {self.log_path}")
        return time.monotonic() - started

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def settle(self, timeout: float) -> tuple[float, list[dict[str, float]]]:
        """Wait until the manager's CPU stays under SETTLE_CPU cores for SETTLE_WINDOW_S; returns the
        seconds waited and the samples (time, cores, RSS)."""
        ps = self.ps
        samples: list[dict[str, float]] = []
        started = time.monotonic()
        last_cpu, last_t = _cpu(ps), started
        quiet_since: float | None = None
        while time.monotonic() - started < timeout:
            time.sleep(0.25)
            now, cpu = time.monotonic(), _cpu(ps)
            cores = (cpu - last_cpu) / (now - last_t)
            last_cpu, last_t = cpu, now
            samples.append({"t": round(now - started, 2), "cores": round(cores, 3), "rss_mb": _mb(ps)})
            if cores < SETTLE_CPU:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= SETTLE_WINDOW_S:
                    return quiet_since - started, samples
            else:
                quiet_since = None
        raise TimeoutError(f"the manager did not settle within {timeout} s")

    def revision(self) -> int:
        with urllib.request.urlopen(self.url + "/healthz", timeout=10) as response:
            return int(json.loads(response.read())["revision"])


def _cpu(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


def _mb(ps: psutil.Process) -> float:
    return round(ps.memory_info().rss / 2**20, 1)


def setup_through_api(url: str, services: int) -> None:
    spec = TaskSpec(command=["python3", "-m", "http.server", "8000"], env={"MODE": "bench", "TIER": "web"})
    with Client(url, timeout=30) as client:
        client.request("PATCH", "/api/v1/cluster", ClusterUpdate(heartbeat_period_s=3600.0))
        client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
        for index in range(services):
            client.request(
                "POST",
                "/api/v1/services",
                ServiceCreate(name=f"svc-{index:03}", node="bench", replicas=0, task=spec),
            )


async def write_machines(db: Path, machines: int) -> list[str]:
    store = SqliteStore(db)
    await store.open()
    try:
        now = dt.datetime.now(dt.UTC)
        made = [
            Machine(
                id=uuid.uuid4().hex,
                created_at=now,
                updated_at=now,
                hostname=f"node-{index:05}.bench.internal",
                ips=[f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"],
                cpus=8.0,
                memory_bytes=32 << 30,
                agent=AgentStatus(state="ready", address="127.0.0.1", version="bench", since=now),
            )
            for index in range(machines)
        ]
        for start in range(0, machines, CHUNK):
            await store.commit([Create(m) for m in made[start : start + CHUNK]])
        return [m.id for m in made]
    finally:
        await store.close()


async def write_tasks(db: Path, machine_ids: list[str], tasks: int) -> float:
    """Set each service's replicas and write its running tasks; returns the seconds it took."""
    started = time.monotonic()
    store = SqliteStore(db)
    await store.open()
    try:
        services = sorted(store.view().all(Service), key=lambda s: s.name)
        per_service = tasks // len(services)
        await store.commit([Update(msgspec.structs.replace(s, replicas=per_service)) for s in services])
        now = dt.datetime.now(dt.UTC)
        placed = 0
        for service in store.view().all(Service):
            status = TaskStatus(state=TaskState.RUNNING, timestamp=now, message="started")
            for first in range(1, per_service + 1, CHUNK):
                ops = []
                for slot in range(first, min(first + CHUNK, per_service + 1)):
                    ops.append(
                        Create(
                            Task(
                                id=uuid.uuid4().hex,
                                created_at=now,
                                updated_at=now,
                                service_id=service.id,
                                service_name=service.name,
                                node_path="bench",
                                slot=slot,
                                machine_id=machine_ids[placed % len(machine_ids)],
                                status=status,
                                spec=service.task,
                                spec_version=service.spec_version,
                                cause="new slot",
                            )
                        )
                    )
                    placed += 1
                await store.commit(ops)
        # Two status changes of the same HISTORY_TASKS tasks: the retained history then holds the older
        # copy of each (an object of its own) and the newer one (the live object, shared), as after the
        # health checks of a running cluster.
        changed = list(store.view().all(Task))[:HISTORY_TASKS]
        for round_ in range(2):
            for first in range(0, len(changed), CHUNK):
                chunk = [store.view().get(Task, t.id) for t in changed[first : first + CHUNK]]
                when = dt.datetime.now(dt.UTC)
                message = "healthy" if round_ else "checked"
                await store.commit(
                    [
                        Update(
                            msgspec.structs.replace(
                                t, status=msgspec.structs.replace(t.status, timestamp=when, message=message)
                            )
                        )
                        for t in chunk
                        if t is not None
                    ]
                )
        return time.monotonic() - started
    finally:
        await store.close()


def store_alone(db: Path, *, trace: bool) -> dict[str, Any]:
    """In a fresh process: open the store on `db` (default history); its RSS before and after. With
    `trace`, Python's allocations are traced: what the live objects take, and what is left once the
    retained history is dropped (the history's own cost)."""
    code = (
        "import asyncio, gc, json, sys, time, tracemalloc, psutil\n"
        "from pathlib import Path\n"
        "from treeherd.store.sqlite import SqliteStore\n"
        "trace = sys.argv[2] == '1'\n"
        "ps = psutil.Process(); gc.collect(); before = ps.memory_info().rss\n"
        "async def main():\n"
        "    if trace: tracemalloc.start()\n"
        "    store = SqliteStore(Path(sys.argv[1]))\n"
        "    started = time.monotonic(); await store.open(); seconds = time.monotonic() - started\n"
        "    gc.collect(); after = ps.memory_info().rss\n"
        "    out = {'rss_before_bytes': before, 'rss_after_bytes': after, 'open_seconds': round(seconds, 2),"
        " 'history_events': sum(len(c.events) for c in store.history())}\n"
        "    if trace:\n"
        "        out['traced_bytes'] = tracemalloc.get_traced_memory()[0]\n"
        "        store._changes.clear(); gc.collect()\n"
        "        out['traced_bytes_without_history'] = tracemalloc.get_traced_memory()[0]\n"
        "    print(json.dumps(out))\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), "1" if trace else "0"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(args: argparse.Namespace, root: Path, report: dict[str, Any]) -> None:
    data_dir = root / "manager"
    db = data_dir / "treeherd.db"
    manager = Manager(data_dir)
    try:
        manager.timed_start(args.timeout)
        setup_through_api(manager.url, args.services)
        manager.timed_stop()
        machine_ids = asyncio.run(write_machines(db, args.machines))
        to_healthy = manager.timed_start(args.timeout)
        settled, _ = manager.settle(args.timeout)
        report["base"] = {
            "to_healthy_s": round(to_healthy, 2),
            "to_settled_s": round(settled, 2),
            "rss_bytes": manager.ps.memory_info().rss,
        }
        manager.timed_stop()
        print(f"base ({args.machines} machines, no task): RSS {report['base']['rss_bytes'] / 2**20:.0f} MiB")
        seconds = asyncio.run(write_tasks(db, machine_ids, args.tasks))
        report["data_set"] = {"write_seconds": round(seconds, 1), "db_bytes": _db_bytes(data_dir)}
        print(
            f"{args.tasks:,} tasks written in {seconds:.1f} s; the store's files: {_db_bytes(data_dir) / 2**20:.0f} MiB"
        )
        restarts = []
        for attempt in range(args.restarts):
            gc.collect()
            to_healthy = manager.timed_start(args.timeout)
            revision = manager.revision()
            settled, samples = manager.settle(args.timeout)
            ps = manager.ps
            one = {
                "to_healthy_s": round(to_healthy, 2),
                "to_settled_s": round(to_healthy + settled, 2),
                "rss_bytes": ps.memory_info().rss,
                "cpu_s": round(_cpu(ps), 2),
                "revisions_written_while_settling": manager.revision() - revision,
                "stop_s": 0.0,
            }
            one["stop_s"] = round(manager.timed_stop(), 2)
            if attempt == 0:
                report["settle_samples"] = samples
            restarts.append(one)
            print(
                f"restart {attempt + 1}: healthy after {one['to_healthy_s']} s, settled after"
                f" {one['to_settled_s']} s, RSS {one['rss_bytes'] / 2**20:.0f} MiB, CPU {one['cpu_s']} s"
            )
        report["restarts"] = restarts
        report["store_alone"] = {
            "measured": store_alone(db, trace=False),
            "traced": store_alone(db, trace=True),
        }
    finally:
        manager.kill()
        report["processes_left"] = reap_processes_under(root)


def _db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("treeherd.db*"))


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    tasks = report["parameters"]["tasks"]
    restarts = report["restarts"]
    rss = sorted(r["rss_bytes"] for r in restarts)[len(restarts) // 2]
    healthy = sorted(r["to_healthy_s"] for r in restarts)[len(restarts) // 2]
    settled = sorted(r["to_settled_s"] for r in restarts)[len(restarts) // 2]
    measured, traced = report["store_alone"]["measured"], report["store_alone"]["traced"]
    return {
        "manager_rss_bytes": rss,
        "manager_bytes_per_task": round((rss - report["base"]["rss_bytes"]) / tasks),
        "store_bytes_per_task": round((measured["rss_after_bytes"] - measured["rss_before_bytes"]) / tasks),
        "store_traced_bytes_per_task": round(traced["traced_bytes_without_history"] / tasks),
        "history_bytes": traced["traced_bytes"] - traced["traced_bytes_without_history"],
        "history_events": traced["history_events"],
        "store_open_s": measured["open_seconds"],
        "restart_to_healthy_s": healthy,
        "restart_to_settled_s": settled,
        "goal_rss_bytes": 4 << 30,
        "goal_restart_s": 30.0,
        "rss_met": rss <= 4 << 30,
        "restart_met": settled <= 30.0,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS against the goal (left); each restart's wall time and CPU against the goal (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, s, restarts = report["parameters"], report["summary"], report["restarts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["no task", *[f"restart {i + 1}" for i in range(len(restarts))]]
    rss = [report["base"]["rss_bytes"] / 2**30, *[r["rss_bytes"] / 2**30 for r in restarts]]
    left.bar(names, rss, color=["grey", *["tab:blue"] * len(restarts)])
    left.axhline(s["goal_rss_bytes"] / 2**30, color="red", linestyle="--", label="goal: 4 GiB")
    left.set_ylabel("manager RSS (GiB)")
    left.set_title(f"memory: {p['tasks']:,} tasks on {p['machines']:,} nodes")
    left.legend(fontsize=8)
    x = range(len(restarts))
    right.bar(
        [i - 0.2 for i in x], [r["to_healthy_s"] for r in restarts], width=0.4, label="to /healthz (wall)"
    )
    right.bar([i + 0.2 for i in x], [r["cpu_s"] for r in restarts], width=0.4, label="manager CPU")
    right.axhline(s["goal_restart_s"], color="red", linestyle="--", label="goal: 30 s")
    right.set_xticks(list(x), [f"restart {i + 1}" for i in x])
    right.set_ylabel("seconds")
    load = report["machine"].get("load_average_at_start") or ["?"]
    right.set_title(f"restart (load average {load[0]} at the start)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=5_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="for each start and each settle")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--no-png", action="store_true")
    parser.add_argument(
        "--plot-only", action="store_true", help="draw OUT/task_memory.png from its JSON; run nothing"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="build the data set here and keep it (default: a temporary directory, removed at the end)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((args.out / "task_memory.json").read_text()), args.out / "task_memory.png")
        return 0
    if args.tasks < args.services or args.machines < 1 or args.restarts < 1:
        parser.error("--tasks must be at least --services; --machines and --restarts at least 1")
    report: dict[str, Any] = {
        "benchmark": "task_memory",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/task_memory.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "parameters": {
            "tasks": args.tasks - args.tasks % args.services,
            "machines": args.machines,
            "services": args.services,
            "restarts": args.restarts,
        },
    }
    started = time.monotonic()
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True)  # a new directory: an existing data set is never written over
        run(args, args.data_dir, report)
    else:
        with tempfile.TemporaryDirectory(prefix="treeherd-task-memory-") as tmp:
            run(args, Path(tmp), report)
    report["summary"] = summarize(report)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "task_memory.json").write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_png:
        plot(report, args.out / "task_memory.png")
    s = report["summary"]
    print(
        f"manager RSS {s['manager_rss_bytes'] / 2**30:.2f} GiB with {report['parameters']['tasks']:,} tasks"
        f" ({s['manager_bytes_per_task']:,} bytes per task; the store alone {s['store_bytes_per_task']:,});"
        f" history of {s['history_events']:,} events {s['history_bytes'] / 2**20:.0f} MiB;"
        f" restart: healthy {s['restart_to_healthy_s']} s, settled {s['restart_to_settled_s']} s;"
        f" processes left {report['processes_left']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
