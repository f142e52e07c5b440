"""One run of the schedule benchmark: start the manager (and etcd with `--store etcd`), the processes of
hollow agents, wait until every node is ready, create the service, wait until every task is RUNNING,
read the tasks back, and hand what was seen to `schedule_figures`. `Run` holds what was started, for the
caller to stop whatever happens."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchlib import Api, ApiError, mount_of, percentile
from profiling import AGENT_COMPONENTS, MANAGER_COMPONENTS, PySpy
from schedule_figures import Observed, figures
from schedule_fleet import Fleet
from schedule_monitor import Poller, Sampler, Usage
from schedule_readback import read_task_rows
from treeherd.testing.etcd import EtcdCluster, EtcdProcess
from treeherd.testing.processes import ManagerProcess

NODE = "bench"
SERVICE = "bench"


@dataclass
class Run:
    """What the benchmark started, so that the caller can stop it."""

    fleet: Fleet | None = None
    manager: ManagerProcess | None = None
    etcd: EtcdProcess | EtcdCluster | None = None
    spies: list[PySpy] = field(default_factory=list)
    threads: list[Poller | Sampler] = field(default_factory=list)


async def wait_ready(api: Api, hostnames: set[str], deadline: float, fleet: Fleet) -> dict[str, Any]:
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
        if (failure := fleet.failure()) is not None:
            raise RuntimeError(failure)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {len(hostnames)} nodes were ready in time")
        await asyncio.sleep(0.5)


async def start_manager(
    args: argparse.Namespace, work: Path, run: Run, phases: dict[str, Any]
) -> ManagerProcess:
    started = time.perf_counter()
    extra: tuple[str, ...] = ()
    if args.store == "etcd":  # an etcd of its own (one member or several), on free loopback ports
        ops = args.etcd_max_txn_ops
        flags = (f"--max-txn-ops={ops}",) if ops else ()
        run.etcd = (
            EtcdCluster(work / "etcd", args.etcd_members, extra_args=flags)
            if args.etcd_members > 1
            else EtcdProcess(work / "etcd", extra_args=flags)
        )
        await asyncio.to_thread(run.etcd.start)
        extra = ("--store", run.etcd.url() + (f"&max-txn-ops={ops}" if ops else ""))
        phases["etcd_start"] = {"seconds": round(time.perf_counter() - started, 3)}
    run.manager = manager = ManagerProcess(work / "manager", extra_args=extra)  # on 127.0.0.1:0
    await asyncio.to_thread(manager.start)
    phases["manager_start"] = {"seconds": round(time.perf_counter() - started, 3)}
    return manager


async def benchmark(
    args: argparse.Namespace, work: Path, agents_dir: Path, report: dict[str, Any], run: Run
) -> None:
    n, m = args.nodes, args.tasks
    report["parameters"]["agent_data_filesystem"] = mount_of(agents_dir)
    phases: dict[str, Any] = report["phases"]
    manager = await start_manager(args, work, run, phases)
    port = int(manager.url.rsplit(":", 1)[1])
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
    sampler = Sampler(proc, interval=args.sample_interval)
    sampler.start()
    run.threads += [poller, sampler]

    # 1. agents, in --agent-procs processes
    hostnames = [f"bench-{i:04d}" for i in range(n)]
    run.fleet = fleet = Fleet(args.agent_procs, work)
    agents: list[psutil.Process] = []
    before = Usage.now(proc, agents)
    deadline = time.monotonic() + args.ready_timeout
    await fleet.start(manager.url, hostnames, agents_dir, db_threads=args.agent_db_threads, db_inline=args.agent_db_inline,
                      switch_interval=args.switch_interval, ready_timeout=args.ready_timeout)  # fmt: skip
    agents += fleet.processes()
    sampler.agents = agents
    ready = await wait_ready(api, set(hostnames), deadline, fleet)
    usage = Usage.now(proc, agents) - before
    phases["agents_ready"] = {**usage.summary(), **ready, "agent_procs": len(agents)}
    print(f"{n} agents ready in {usage.wall:.2f} s ({len(agents)} processes)", flush=True)
    if (failure := fleet.failure()) is not None:
        raise RuntimeError(failure)

    # 2. idle: what N connected agents cost the manager with nothing to do
    before = Usage.now(proc, agents)
    await asyncio.sleep(args.settle)
    phases["idle"] = (Usage.now(proc, agents) - before).summary()

    # 3. the service
    spies: list[PySpy] = []
    if args.profile:
        stem = report["_stem"]
        spies.append(PySpy(manager.pid, args.out / f"{stem}-manager.collapsed", rate=args.profile_rate,
                           log=work / "py-spy-manager.log", rules=MANAGER_COMPONENTS))  # fmt: skip
        if args.profile_agents:
            for i, pid in enumerate(fleet.pids):
                name = f"{stem}-agents.collapsed" if len(agents) == 1 else f"{stem}-agents{i}.collapsed"
                spies.append(PySpy(pid, args.out / name, rate=args.profile_rate,
                                   log=work / f"py-spy-agents{i}.log", rules=AGENT_COMPONENTS))  # fmt: skip
        run.spies = spies
        await asyncio.sleep(1.0)  # let py-spy attach
    body = {"name": SERVICE, "node": NODE, "replicas": m, "task": {"command": ["hollow"]}}
    before = Usage.now(proc, agents)
    poller.created_at = created = time.perf_counter()
    created_wall = time.time()
    await asyncio.to_thread(api.call, "POST", "/api/v1/services", body)
    report["create_request_seconds"] = round(time.perf_counter() - created, 3)
    poller.polling.set()
    acknowledged = asyncio.create_task(fleet.settled(m))

    def confirm(_: object) -> None:  # poll the summary at once, then at every tick, until it says M
        poller.hurry.set()
        poller.wake.set()

    acknowledged.add_done_callback(confirm)
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(all_running), args.timeout)
    except TimeoutError:
        timed_out = True
    usage = Usage.now(proc, agents) - before
    if not timed_out:  # the acknowledgements normally arrive before the poll that sees them committed
        await asyncio.wait({acknowledged}, timeout=5.0)
    if acknowledged.done() and not acknowledged.cancelled():
        report["seconds_to_all_running_acknowledged"] = round(acknowledged.result() - created, 3)
    else:
        acknowledged.cancel()
        report["seconds_to_all_running_acknowledged"] = None
    for spy in spies:
        await asyncio.to_thread(spy.stop)
    seen = await fleet.collect()
    schedule_lag = sorted(lag for t, lag in seen["loop_lag"] if t >= created)
    phases["schedule"] = {
        **usage.summary(),
        "agents_loop_lag_s": {"p50": round(percentile(schedule_lag, 50), 4),
                              "p99": round(percentile(schedule_lag, 99), 4),
                              "max": round(schedule_lag[-1], 4) if schedule_lag else math.nan},
    }  # fmt: skip
    phases["agents_ready"]["threads_in_agents_processes"] = seen["threads"]
    report["agents_rss_mb"] = seen["rss_mb"]  # each process's, after all RUNNING
    report["status"] = "timeout" if timed_out else "ok"
    report["seconds_to_all_running"] = None if timed_out else round(poller.first_all_running or 0, 3)
    for key in ("manager_cpu_s", "agents_cpu_s", "harness_cpu_s"):
        report[key] = phases["schedule"][key]
    report["agent_sessions_established"] = seen["sessions"]
    label = "timed out" if timed_out else f"all running after {poller.first_all_running:.2f} s"
    print(f"service of {m} tasks: {label}", flush=True)

    # 4. read every task once: the RUNNING timestamps (and a few full tasks, to check created_at)
    started = time.perf_counter()
    rows: list[dict[str, Any]] | None = None
    full: list[dict[str, Any]] = []
    try:
        rows = await read_task_rows("127.0.0.1", port, SERVICE)
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "rows": len(rows or [])}
        for row in (rows or [])[:: max(1, len(rows or []) // 20)]:
            full.append(await asyncio.to_thread(api.call, "GET", f"/api/v1/tasks/{row['id']}"))
    except (OSError, http.client.HTTPException, ApiError, ValueError) as failure:
        # A manager in trouble may not answer in time: the agents' own records still tell a lot.
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "error": repr(failure)}

    # 5. figures
    observed = Observed(
        m=m, seen=seen["seen"], started=seen["started"], reports=seen["reports"], updates=seen["updates"],
        loop_lag=seen["loop_lag"], poller=poller, sampler=sampler, manager=proc, created=created,
        created_wall=created_wall, schedule_s=usage.wall, rows=rows, full=full, spies=spies,
        poll_interval=args.poll_interval, summary_interval=args.summary_interval,
    )  # fmt: skip
    figures(report, observed)
