#!/usr/bin/env python3
"""Schedule one big service on many hollow agents over the real transport, and measure it.

Starts `python -m treeherd manager` (via `treeherd.testing.processes.ManagerProcess`) on a port of
127.0.0.1 that it picks itself, in a temporary directory, on the embedded SQLite store (with `--store etcd`:
on a single-member etcd started beside it on free loopback ports, etcd's default flags), and creates the
tree node `bench`. Then, in this process, runs `--nodes` real `treeherd.agent.Agent`s with a hollow executor, all in one asyncio loop
(uvloop when available): each dials the manager's WebSocket agent channel, registers as `bench-NNNN` with the
CPUs and memory psutil sees, and keeps its own local SQLite DB. Once every node is ready it creates one
replicated service of `--tasks` replicas (`hollow`, no reservations) and measures, until every task is
RUNNING:

- the time from the create request until `GET /api/v1/services/bench` says running == desired == M;
- placements/s: M / (time from the create request until the last task was ASSIGNED);
- each task's create -> RUNNING latency;
- the manager's CPU time (main thread and others) and RSS, this process's CPU (the agents), the machine's CPU.

Results go to `OUT/schedule-NxM.json` and `OUT/schedule-NxM.png`; `--profile` also records the manager (and
with `--profile-agents` this process) with py-spy while the service is scheduled, and summarises the profile
in the JSON. Every wait is bounded; the agents and the manager (by pid) are stopped whatever happens.

    .venv/bin/python benchmarks/schedule.py --nodes 100 --tasks 10000
    .venv/bin/python benchmarks/schedule.py --nodes 1000 --tasks 100000 --timeout 600
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import http.client
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import treeherd.agent.agent as agent_module
import treeherd.agent.db as agent_db
from benchlib import (
    Api,
    ApiError,
    distribution,
    event_loop_runner,
    machine_info,
    mount_of,
    parse_time,
    percentile,
    wait_quiet,
)
from profiling import AGENT_COMPONENTS, MANAGER_COMPONENTS, PySpy, summarize_profile
from schedule_agents import (
    CountingHandler,
    RecordingExecutor,
    SharedThreadTaskDB,
    Tally,
    loop_lag,
    placement_batches,
    summarize_manager_log,
    watch_acknowledged,
)
from schedule_monitor import MIB, Poller, Sampler, Usage
from schedule_plot import summary_lines, write_outputs
from treeherd.agent import Agent
from treeherd.model.states import TaskState
from treeherd.testing import processes
from treeherd.testing.etcd import EtcdCluster, EtcdProcess
from treeherd.testing.processes import ManagerProcess

NODE = "bench"
SERVICE = "bench"
STOP_AGENTS_S = 30.0  # for every agent to end after stop()
GOAL_PLACEMENTS_PER_S = 10_000  # the team's goal: placements/s ...
GOAL_ALL_RUNNING_S = 30.0  # ... and 100,000 tasks on 1,000 nodes all RUNNING within this, on 2 cores


# ---- the benchmark ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the benchmark started, so that `finally` can stop it."""

    agents: list[Agent] = field(default_factory=list)
    agent_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    spies: list[PySpy] = field(default_factory=list)
    threads: list[Poller | Sampler] = field(default_factory=list)
    db_pool: ThreadPoolExecutor | None = None


async def wait_ready(api: Api, hostnames: set[str], deadline: float) -> dict[str, Any]:
    """Poll the machines list until every agent's node is ready; returns how it went."""
    polls = 0
    ready = 0
    while True:
        machines = await asyncio.to_thread(api.call, "GET", "/api/v1/machines?agents=true")
        polls += 1
        ready = sum(
            1
            for m in machines
            if m["hostname"] in hostnames and (m.get("agent") or {}).get("state") == "ready"
        )
        if ready == len(hostnames):
            return {"ready": ready, "polls": polls}
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {len(hostnames)} nodes were ready in time")
        await asyncio.sleep(0.5)


async def stop_agents(run: Run) -> dict[str, int]:
    for agent in run.agents:
        agent.stop()
    pending = [t for t in run.agent_tasks if not t.done()]
    if pending:
        _, pending_set = await asyncio.wait(pending, timeout=STOP_AGENTS_S)
        for task in pending_set:
            task.cancel()
        if pending_set:
            await asyncio.wait(pending_set, timeout=5.0)
    failed = sum(1 for t in run.agent_tasks if t.done() and not t.cancelled() and t.exception() is not None)
    return {"failed": failed, "cancelled": sum(1 for t in run.agent_tasks if t.cancelled())}


async def benchmark(
    args: argparse.Namespace, work: Path, agents_dir: Path, report: dict[str, Any], run: Run
) -> None:
    n, m = args.nodes, args.tasks
    data_dir = work / "manager"
    report["parameters"]["agent_data_filesystem"] = mount_of(agents_dir)
    phases: dict[str, Any] = report["phases"]

    started = time.perf_counter()
    extra: tuple[str, ...] = ()
    if args.store == "etcd":  # an etcd of its own (one member or several), on free loopback ports
        ops = args.etcd_max_txn_ops
        flags = (f"--max-txn-ops={ops}",) if ops else ()
        etcd: EtcdProcess | EtcdCluster = (
            EtcdCluster(work / "etcd", args.etcd_members, extra_args=flags)
            if args.etcd_members > 1
            else EtcdProcess(work / "etcd", extra_args=flags)
        )
        report["_etcd"] = etcd
        await asyncio.to_thread(etcd.start)
        extra = ("--store", etcd.url() + (f"&max-txn-ops={ops}" if ops else ""))
        phases["etcd_start"] = {"seconds": round(time.perf_counter() - started, 3)}
    manager = ManagerProcess(data_dir, extra_args=extra)  # on 127.0.0.1:0: it picks its port, says which
    report["_manager"] = manager
    await asyncio.to_thread(manager.start)
    port = int(manager.url.rsplit(":", 1)[1])
    phases["manager_start"] = {"seconds": round(time.perf_counter() - started, 3)}
    proc = psutil.Process(manager.pid)
    api = Api("127.0.0.1", port)
    report["manager"] = {"url": manager.url, "pid": manager.pid, "log": str(manager.log_path)}
    await asyncio.to_thread(api.call, "POST", "/api/v1/nodes", {"path": NODE})
    if args.heartbeat_period is not None:  # before the agents connect: their sessions start with it
        await asyncio.to_thread(
            api.call, "PATCH", "/api/v1/cluster", {"heartbeat_period_s": args.heartbeat_period}
        )
    report["cluster_settings"] = await asyncio.to_thread(api.call, "GET", "/api/v1/cluster")

    # the monitor: CPU/RSS samples all along, summary polls once the service exists
    loop = asyncio.get_running_loop()
    all_running = loop.create_future()

    def signal_all_running(at: float) -> None:
        loop.call_soon_threadsafe(lambda: all_running.done() or all_running.set_result(at))

    poller = Poller(
        "127.0.0.1", port, service=SERVICE, target=m, interval=args.poll_interval,
        summary_interval=args.summary_interval, all_running=signal_all_running,
    )  # fmt: skip
    poller.start()
    exclude = {poller.native_id} if poller.native_id else set()
    sampler = Sampler(proc, interval=args.sample_interval, exclude=exclude)
    sampler.start()
    run.threads += [poller, sampler]
    if sampler.native_id:
        exclude.add(sampler.native_id)
    lag_samples: list[tuple[float, float]] = []
    lag_stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag_samples, lag_stop))

    # 1. agents
    tally = Tally()
    seen = tally.seen
    hostnames = [f"bench-{i:04d}" for i in range(n)]
    before = Usage.now(proc, exclude)
    if args.agent_db_threads:
        SharedThreadTaskDB.pool = run.db_pool = ThreadPoolExecutor(args.agent_db_threads, "bench-agent-db")
        agent_module.TaskDB = SharedThreadTaskDB  # type: ignore[misc]  # for the Agents made below
    for i, hostname in enumerate(hostnames):
        agent = Agent(
            manager.url, agents_dir / hostname, executor=RecordingExecutor(tally), hostname=hostname
        )
        agent.worker.set_sender(tally.counting(agent.session.send_report))
        run.agents.append(agent)
        run.agent_tasks.append(asyncio.create_task(agent.run(), name=f"agent-{i}"))
    agent_module.TaskDB = agent_db.TaskDB  # type: ignore[misc]
    ready = await wait_ready(api, set(hostnames), time.monotonic() + args.ready_timeout)
    usage = Usage.now(proc, exclude) - before
    phases["agents_ready"] = {
        **usage.summary(),
        **ready,
        "threads_in_agents_process": threading.active_count(),
    }
    print(f"{n} agents ready in {usage.wall:.2f} s ({threading.active_count()} threads)", flush=True)
    dead = [t for t in run.agent_tasks if t.done()]
    if dead:
        raise RuntimeError(f"{len(dead)} agents ended early: {dead[0].exception()!r}")

    # 2. idle: what N connected agents cost the manager with nothing to do
    before = Usage.now(proc, exclude)
    await asyncio.sleep(args.settle)
    phases["idle"] = (Usage.now(proc, exclude) - before).summary()

    # 3. the service
    spies: list[PySpy] = []
    if args.profile:
        stem = report["_stem"]
        spies.append(PySpy(manager.pid, args.out / f"{stem}-manager.collapsed", rate=args.profile_rate,
                           log=work / "py-spy-manager.log", rules=MANAGER_COMPONENTS))  # fmt: skip
        if args.profile_agents:
            spies.append(PySpy(os.getpid(), args.out / f"{stem}-agents.collapsed", rate=args.profile_rate,
                               log=work / "py-spy-agents.log", rules=AGENT_COMPONENTS))  # fmt: skip
        run.spies = spies
        await asyncio.sleep(1.0)  # let py-spy attach
    body = {"name": SERVICE, "node": NODE, "replicas": m, "task": {"command": ["hollow"]}}
    lag_before = len(lag_samples)
    before = Usage.now(proc, exclude)
    poller.created_at = created = time.perf_counter()
    created_wall = time.time()
    await asyncio.to_thread(api.call, "POST", "/api/v1/services", body)
    report["create_request_seconds"] = round(time.perf_counter() - created, 3)
    poller.polling.set()
    acknowledged = asyncio.create_task(watch_acknowledged(run.agents, tally, m))

    def confirm(_: object) -> None:  # poll the summary at once, then at every tick, until it says M
        poller.hurry.set()
        poller.wake.set()

    acknowledged.add_done_callback(confirm)
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(all_running), args.timeout)
    except TimeoutError:
        timed_out = True
    usage = Usage.now(proc, exclude) - before
    if not timed_out:  # the acknowledgements normally arrive before the poll that sees them committed
        await asyncio.wait({acknowledged}, timeout=5.0)
    if acknowledged.done() and not acknowledged.cancelled():
        report["seconds_to_all_running_acknowledged"] = round(acknowledged.result() - created, 3)
    else:
        acknowledged.cancel()
        report["seconds_to_all_running_acknowledged"] = None
    schedule_s = usage.wall
    for spy in spies:
        await asyncio.to_thread(spy.stop)
    schedule_lag = sorted(lag for _, lag in lag_samples[lag_before:])
    phases["schedule"] = {
        **usage.summary(),
        "agents_loop_lag_s": {"p50": round(percentile(schedule_lag, 50), 4),
                              "p99": round(percentile(schedule_lag, 99), 4),
                              "max": round(schedule_lag[-1], 4) if schedule_lag else math.nan},
    }  # fmt: skip
    report["status"] = "timeout" if timed_out else "ok"
    report["seconds_to_all_running"] = None if timed_out else round(poller.first_all_running or 0, 3)
    report["manager_cpu_s"] = phases["schedule"]["manager_cpu_s"]
    report["agents_cpu_s"] = phases["schedule"]["agents_cpu_s"]
    label = "timed out" if timed_out else f"all running after {poller.first_all_running:.2f} s"
    print(f"service of {m} tasks: {label}", flush=True)

    # 4. read every task once: the RUNNING timestamps (and a few full tasks, to check created_at)
    started = time.perf_counter()
    rows: list[dict[str, Any]] | None = None
    full: list[dict[str, Any]] = []
    try:
        rows = await asyncio.to_thread(api.call, "GET", f"/api/v1/services/{SERVICE}/tasks?all=false")
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "rows": len(rows or [])}
        for row in (rows or [])[:: max(1, len(rows or []) // 20)]:
            full.append(await asyncio.to_thread(api.call, "GET", f"/api/v1/tasks/{row['id']}"))
    except (OSError, http.client.HTTPException, ApiError, ValueError) as failure:
        # A manager in trouble may not answer in time: the agents' own records still tell a lot.
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "error": repr(failure)}
    lag_stop.set()
    await asyncio.wait({lag_task}, timeout=1.0)

    # 5. figures
    if rows is not None:
        states = collections.Counter(row["state"] for row in rows)
        running_rows = [row for row in rows if row["state"] == "running"]
        report["tasks_running"] = len(running_rows)
        report["task_states"] = dict(states)
        running_at = {row["id"]: parse_time(row["since"]) for row in running_rows}
        report["running_timestamps_from"] = "the manager's task rows (since = the agent's RUNNING time)"
    else:  # the last summary poll, and the agents' own start times
        report["tasks_running"] = poller.polls[-1][1] if poller.polls else 0
        running_at = {i: s.started for i, s in seen.items() if not math.isnan(s.started)}
        report["running_timestamps_from"] = "the agents' records (not confirmed by the manager)"
    report["tasks_reached_agents"] = len(seen)
    report["tasks_started_by_agents"] = tally.started
    mismatched = sum(
        1
        for task in full
        if task["id"] in seen and abs(parse_time(task["created_at"]) - seen[task["id"]].created) > 1e-3
    )
    report["created_at_checked"] = {"tasks": len(full), "mismatched": mismatched}

    created_at = [s.created for s in seen.values()]
    report["tasks_seen_assigned"] = sum(1 for s in seen.values() if s.state == TaskState.ASSIGNED)
    first_created = min(created_at) if created_at else math.nan
    timing: dict[str, Any] = {
        "request_to_first_task_created_s": round(first_created - created_wall, 3),
        "request_to_last_task_created_s": round(max(created_at) - created_wall, 3) if created_at else None,
    }
    batches = placement_batches(seen, poller.revisions)
    placed = [(b["committed_by"] - created_wall, b["tasks"]) for b in batches]
    report["scheduler_batches"] = [
        {**b, "assigned_at": round(b["assigned_at"] - created_wall, 3),
         "committed_after": round(b["committed_after"] - created_wall, 3),
         "committed_by": round(b["committed_by"] - created_wall, 3)}
        for b in batches
    ]  # fmt: skip
    if batches and sum(b["tasks"] for b in batches) == m:
        last = batches[-1]
        report["placements_per_second"] = round(m / (last["committed_by"] - created_wall), 1)
        timing["request_to_first_placement_committed_s"] = round(batches[0]["committed_by"] - created_wall, 3)
        timing["request_to_last_placement_committed_s"] = round(last["committed_by"] - created_wall, 3)
        timing["request_to_last_placement_committed_lower_bound_s"] = round(
            last["committed_after"] - created_wall, 3
        )
    else:
        report["placements_per_second"] = None
        report["tasks_placed"] = sum(b["tasks"] for b in batches)
    latencies = [running_at[i] - seen[i].created for i in running_at if i in seen]
    from_request = [t - created_wall for t in running_at.values()]
    latency = distribution(latencies)
    report["create_to_running_p50_s"] = latency.get("p50")
    report["create_to_running_p99_s"] = latency.get("p99")
    report["latency_s"] = {
        "task_created_to_running": latency,
        "request_to_running": distribution(from_request),
        "created_to_assigned": distribution([s.status_at - s.created for s in seen.values() if s.state == TaskState.ASSIGNED]),
        "assigned_to_agent": distribution([s.received - s.status_at for s in seen.values() if s.state == TaskState.ASSIGNED]),
        "agent_to_running": distribution([running_at[i] - seen[i].received for i in running_at if i in seen]),
    }  # fmt: skip
    if running_at:
        timing["request_to_last_running_agent_clock_s"] = round(max(running_at.values()) - created_wall, 3)
    report["timing"] = timing
    report["manager_rss_mb"] = round(sampler.rss_max / MIB, 1)
    report["manager_rss_after_mb"] = round(proc.memory_info().rss / MIB, 1)
    # CPU over time (from the sampler), and the manager's CPU until the last placement and after it
    offset = created - sampler.started_at
    timeline = [{**x, "t": round(x["t"] - offset, 2)} for x in sampler.samples if x["t"] - offset >= -1.0]
    step = max(1, len(timeline) // 400)
    report["timeline"] = timeline[::step]
    if report.get("placements_per_second"):
        placed_at = batches[-1]["committed_by"] - created_wall
        previous_t = 0.0
        until = after = 0.0
        for x in timeline:
            if x["t"] <= 0:
                previous_t = x["t"]
                continue
            spent = x["manager_cores"] * (x["t"] - max(previous_t, 0.0))
            if x["t"] <= placed_at:
                until += spent
            else:
                after += spent
            previous_t = x["t"]
        report["manager_cpu_split_s"] = {
            "until_last_placement": round(until, 1), "after_last_placement": round(after, 1),
            "note": "integrated from the sampler's rates (0.25 s steps)",
        }  # fmt: skip
    manager_stalls = [(t - created_wall, v) for t, _, v in poller.revisions if t >= created_wall and v >= 1.0]
    agent_stalls = [(t - created, lag) for t, lag in lag_samples if t >= created and lag >= 1.0]
    report["stalls"] = {  # seconds since the create request, and how long
        "manager_healthz_over_1s": [(round(t, 1), round(v, 2)) for t, v in manager_stalls][:40],
        "agents_loop_lag_over_1s": [(round(t, 1), round(v, 2)) for t, v in agent_stalls][:40],
    }
    report["agent_reports"] = {"reports": tally.reports, "statuses_by_state": dict(tally.updates)}
    report["poll"] = {
        "interval_s": args.poll_interval,
        "summary_interval_s": args.summary_interval,
        "summary_polls": len(poller.polls),
        "summary_request_seconds": distribution([p[3] for p in poller.polls]),
        "healthz_polls": len(poller.revisions),
        "healthz_request_seconds_during_schedule": distribution(
            [r[2] for r in poller.revisions if created_wall <= r[0] <= created_wall + schedule_s]
        ),
        "errors": len(poller.errors),
        "error_samples": poller.errors[:5],
    }
    if spies:
        report["profile"] = {spy.path.name: summarize_profile(spy.path, spy.rules) for spy in spies}

    # for the plot only (popped before the JSON is written), as seconds since the create request
    report["_plot"] = {
        "polls": poller.polls,
        "placed": placed,
        "running_agent_clock": sorted(from_request),
        "latencies": sorted(latencies),
        "samples": sampler.samples,
        "created_offset": created - sampler.started_at,
        "agents_loop_lag": [(t - created, lag) for t, lag in lag_samples if lag > 0.05],
        "manager_healthz": [(t - created_wall, latency) for t, _, latency in poller.revisions],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="hollow agents (default 100)")
    parser.add_argument("--tasks", type=int, default=10_000, help="replicas of the service (default 10000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--json", type=Path, default=None, help="JSON path (default OUT/schedule-NxM.json)")
    parser.add_argument("--png", type=Path, default=None, help="PNG path (default OUT/schedule-NxM.png)")
    parser.add_argument("--no-png", action="store_true", help="do not draw the PNG")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for every task to run (default 300)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds for every agent to be ready (default 180)"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="idle seconds before the service (default 3)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="/healthz polls (default 0.5 s)")
    parser.add_argument(
        "--summary-interval", type=float, default=2.0,
        help="service summary polls until the agents see every status acknowledged, then every"
        " --poll-interval (default 2 s: a summary costs the manager O(tasks))",
    )  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=0.25, help="CPU samples (default 0.25 s)")
    parser.add_argument(
        "--agent-dir",
        default=None,
        help="where the agents' data dirs go (default: the temp dir; try /dev/shm)",
    )
    parser.add_argument(
        "--heartbeat-period", type=float, default=None,
        help="set the cluster's heartbeat period first (default: leave it, 5 s; nodes are down after 3 periods)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-interval", type=float, default=None,
        help="sys.setswitchinterval for this process (the agents), in seconds (default: Python's, 0.005)",
    )  # fmt: skip
    parser.add_argument(
        "--agent-db-threads", type=int, default=0,
        help="share this many DB threads between all agents (default 0: one per agent, as treeherd does)",
    )  # fmt: skip
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds for the manager to start"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the manager while the service schedules"
    )
    parser.add_argument(
        "--profile-agents", action="store_true", help="with --profile: py-spy this process too"
    )
    parser.add_argument(
        "--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="wait up to this long for the machine's other load to drop below 0.25 cores (default 120; 0: no)",
    )  # fmt: skip
    parser.add_argument(
        "--store",
        choices=["sqlite", "etcd"],
        default="sqlite",
        help="the manager's store: embedded SQLite, or a single-member etcd started here (default sqlite)",
    )
    parser.add_argument(
        "--etcd-max-txn-ops",
        type=int,
        default=0,
        help="with --store etcd: etcd's --max-txn-ops, told to the manager too (default: etcd's, 128)",
    )
    parser.add_argument(
        "--etcd-members",
        type=int,
        default=1,
        help="with --store etcd: how many etcd members (on loopback; default 1)",
    )
    parser.add_argument("--tag", default="", help="appended to the output names: schedule-NxM-TAG.*")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and the logs)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.tasks < 1:
        parser.error("--nodes and --tasks must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    processes.STARTUP_SECONDS = max(processes.STARTUP_SECONDS, args.startup_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"schedule-{args.nodes}x{args.tasks}" + (f"-{args.store}" if args.store != "sqlite" else "")
    stem += f"-{args.tag}" if args.tag else ""
    report: dict[str, Any] = {
        "benchmark": "schedule",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nodes": args.nodes,
        "tasks": args.tasks,
        "tasks_running": 0,
        "seconds_to_all_running": None,
        "placements_per_second": None,
        "create_to_running_p50_s": None,
        "create_to_running_p99_s": None,
        "manager_cpu_s": None,
        "manager_rss_mb": None,
        "status": "failed",
        "machine": machine_info(),
        "parameters": {
            "nodes": args.nodes,
            "tasks": args.tasks,
            "timeout_s": args.timeout,
            "poll_interval_s": args.poll_interval,
            "summary_interval_s": args.summary_interval,
            "settle_s": args.settle,
            "heartbeat_period_s": args.heartbeat_period,
            "agent_dir": args.agent_dir,
            "agent_db_threads": args.agent_db_threads or "one per agent",
            "agents_switch_interval_s": args.switch_interval or sys.getswitchinterval(),
            "profile": args.profile,
            "store": "sqlite (embedded, WAL, synchronous=FULL)"
            if args.store == "sqlite"
            else f"etcd ({args.etcd_members} member(s) on loopback, --max-txn-ops {args.etcd_max_txn_ops or 128})",
            "service": {"replicas": args.tasks, "task": {"command": ["hollow"]}, "reservations": "none"},
        },
        "phases": {},
        "_stem": stem,
    }
    runner, report["parameters"]["agents_loop"] = event_loop_runner()
    if args.quiet_wait > 0:
        report["machine"]["before_start"] = quiet = wait_quiet(args.quiet_wait)
        if not quiet["quiet"]:
            print(
                f"warning: the machine is busy ({quiet['busy_cores_last_windows']} cores in use)", flush=True
            )
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    started = time.perf_counter()
    run = Run()
    error: BaseException | None = None
    work = Path(tempfile.mkdtemp(prefix="treeherd-schedule-"))
    # The agents' warnings (sessions lost, managers unreachable...) are counted, and kept in a file
    # rather than printed: a thousand agents losing their sessions would flood the terminal.
    agent_logs = CountingHandler(work / "agents.log")
    treeherd_logger = logging.getLogger("treeherd")
    treeherd_logger.addHandler(agent_logs)
    treeherd_logger.setLevel(logging.WARNING)
    treeherd_logger.propagate = False
    if args.agent_dir:  # a directory of our own inside it, removed afterwards
        Path(args.agent_dir).mkdir(parents=True, exist_ok=True)
        agents_dir = Path(tempfile.mkdtemp(prefix="treeherd-schedule-agents-", dir=args.agent_dir))
    else:
        agents_dir = work / "agents"
    try:
        with runner:
            try:
                runner.run(benchmark(args, work, agents_dir, report, run))
            except Exception as failure:  # reported below, after everything is stopped
                error = failure
            finally:
                report["agent_sessions_established"] = sum(a.session.sessions for a in run.agents)
                report["agents_stop"] = runner.run(stop_agents(run))
                if run.db_pool is not None:
                    run.db_pool.shutdown(wait=False, cancel_futures=True)
    finally:
        for spy in run.spies:
            spy.stop()
        for thread in run.threads:
            thread.stopping.set()
            if isinstance(thread, Poller):
                thread.wake.set()
        for thread in run.threads:
            thread.join(35.0)  # a poll in flight ends within its 30 s timeout
        manager: ManagerProcess | None = report.pop("_manager", None)
        if manager is not None:
            try:
                report["manager_exit_code"] = manager.stop()
            except Exception as failure:  # SIGKILL below in any case
                report["manager_exit_code"] = repr(failure)
            finally:
                manager.kill()
            report["manager_log"] = summarize_manager_log(manager.log())
            if error is not None:
                report["manager_log_tail"] = manager.log()[-3000:]
        etcd: EtcdProcess | EtcdCluster | None = report.pop("_etcd", None)
        if etcd is not None:
            etcd.stop()
        if args.keep:
            print(f"keeping {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.agent_dir and not args.keep:
            shutil.rmtree(agents_dir, ignore_errors=True)
    report.pop("_stem", None)
    placements, all_running = report.get("placements_per_second"), report.get("seconds_to_all_running")
    report["goal"] = {
        "placements_per_second": GOAL_PLACEMENTS_PER_S,
        "placements_met": placements is not None and placements >= GOAL_PLACEMENTS_PER_S,
        "all_running_seconds": GOAL_ALL_RUNNING_S,
        "all_running_met": all_running is not None and all_running <= GOAL_ALL_RUNNING_S,
        "all_running_goal_is_for": "100,000 tasks on 1,000 nodes",
    }
    report["agents_log"] = dict(agent_logs.counts.most_common(12))
    treeherd_logger.removeHandler(agent_logs)
    agent_logs.close()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    if error is not None:
        report["error"] = repr(error)
    json_path = args.json or args.out / f"{stem}.json"
    png_path = write_outputs(report, json_path, None if args.no_png else args.png or args.out / f"{stem}.png")
    print()
    print("\n".join(summary_lines(report)))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    if error is not None:
        print(f"failed: {error!r}", file=sys.stderr)
        return 1
    return 0 if report["status"] == "ok" else 2


if __name__ == "__main__":
    sys.exit(main())
