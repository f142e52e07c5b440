#!/usr/bin/env python3
"""Schedule one big service on many hollow agents over the real transport, and measure it.

Starts `python -m treeherd manager` (via `treeherd.testing.processes.ManagerProcess`) on a port of
127.0.0.1 that it picks itself, in a temporary directory, on the embedded SQLite store (with `--store etcd`:
on a single-member etcd started beside it on free loopback ports, etcd's default flags), and creates the
tree node `bench`. Then it starts `--agent-procs` processes (`schedule_hollow.py`) that run `--nodes` real
`treeherd.agent.Agent`s with a hollow executor between them, each process on one asyncio loop (uvloop when
available): each agent dials the manager's WebSocket agent channel, registers as `bench-NNNN` with the
CPUs and memory psutil sees, and keeps its own local SQLite DB. Once every node is ready it creates one
replicated service of `--tasks` replicas (`hollow`, no reservations) and measures, until every task is
RUNNING:

- the time from the create request until `GET /api/v1/services/bench` says running == desired == M;
- placements/s: M / (time from the create request until the last task was ASSIGNED);
- each task's create -> RUNNING latency;
- the manager's CPU time (main thread and others; per task, the headline figure) and RSS, the harness's
  CPU (the agents' processes, and this process's polls) apart from it, the machine's CPU.

Results go to `OUT/schedule-NxM.json` and `OUT/schedule-NxM.png`; `--profile` also records the manager (and
with `--profile-agents` the agents' processes) with py-spy while the service is scheduled, and summarises the
profile in the JSON. Every wait is bounded; the agents' processes and the manager are stopped (by pid)
whatever happens, and the JSON counts the agents' processes left (`agent_procs_left`, 0).

    .venv/bin/python benchmarks/schedule.py --nodes 100 --tasks 10000
    .venv/bin/python benchmarks/schedule.py --nodes 1000 --tasks 100000 --timeout 600
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import datetime as dt
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import event_loop_runner, machine_info, wait_quiet
from schedule_agents import summarize_manager_log
from schedule_monitor import Poller
from schedule_plot import summary_lines, write_outputs
from schedule_run import Run, benchmark
from treeherd.testing import processes

STOP_FLEET_S = 90.0  # for the agents' processes to stop their agents and exit
GOAL_PLACEMENTS_PER_S = 10_000  # the team's goal: placements/s ...
GOAL_ALL_RUNNING_S = 30.0  # ... and 100,000 tasks on 1,000 nodes all RUNNING within this, on 2 cores


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
        " --poll-interval (default 2 s)",
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
        help="sys.setswitchinterval for the agents' processes, in seconds (default: Python's, 0.005)",
    )  # fmt: skip
    parser.add_argument(
        "--agent-db-threads", type=int, default=0,
        help="share this many DB threads between the agents of each agents process"
        " (default 0: one per agent, as treeherd does)",
    )  # fmt: skip
    parser.add_argument(
        "--agent-db-inline",
        action="store_true",
        help="make the agents' local DB calls on their event loop, without a thread (see the README)",
    )
    parser.add_argument(
        "--agent-procs", type=int, default=1,
        help="run the hollow agents in this many processes, dealt out in turn (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds for the manager to start"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the manager while the service schedules"
    )
    parser.add_argument(
        "--profile-agents", action="store_true", help="with --profile: py-spy the agents' processes too"
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
    if not 1 <= args.agent_procs <= args.nodes:
        parser.error(f"--agent-procs must be between 1 and --nodes ({args.nodes}), not {args.agent_procs}")
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
        "manager_cpu_us_per_task": None,
        "harness_cpu_s": None,
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
            "agent_db_threads": "none (inline)"
            if args.agent_db_inline
            else args.agent_db_threads or "one per agent",
            "agents_switch_interval_s": args.switch_interval or sys.getswitchinterval(),
            "agent_procs": args.agent_procs,
            "profile": args.profile,
            "store": "sqlite (embedded, WAL, synchronous=FULL)"
            if args.store == "sqlite"
            else f"etcd ({args.etcd_members} member(s) on loopback, --max-txn-ops {args.etcd_max_txn_ops or 128})",
            "service": {"replicas": args.tasks, "task": {"command": ["hollow"]}, "reservations": "none"},
        },
        "phases": {},
        "_stem": stem,
    }
    # Interrupted (Ctrl-C, or SIGTERM, even if started with SIGINT ignored), the run stops what it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: _thread.interrupt_main())
    runner, report["parameters"]["agents_loop"] = event_loop_runner()
    if args.quiet_wait > 0:
        report["machine"]["before_start"] = quiet = wait_quiet(args.quiet_wait)
        if not quiet["quiet"]:
            print(
                f"warning: the machine is busy ({quiet['busy_cores_last_windows']} cores in use)", flush=True
            )
    started = time.perf_counter()
    run = Run()
    error: BaseException | None = None
    work = Path(tempfile.mkdtemp(prefix="treeherd-schedule-"))
    if args.agent_dir:  # a directory of our own inside it, removed afterwards
        Path(args.agent_dir).mkdir(parents=True, exist_ok=True)
        agents_dir = Path(tempfile.mkdtemp(prefix="treeherd-schedule-agents-", dir=args.agent_dir))
    else:
        agents_dir = work / "agents"
    try:
        with runner:
            try:
                runner.run(benchmark(args, work, agents_dir, report, run))
            except (Exception, KeyboardInterrupt) as failure:  # reported below, after everything is stopped
                error = failure
            finally:
                if run.fleet is not None:
                    report["agents_stop"] = runner.run(asyncio.wait_for(run.fleet.stop(), STOP_FLEET_S))
    except BaseException as failure:  # interrupted while stopping: still stop the rest below
        error = error or failure
    finally:
        if run.fleet is not None:  # by pid, whatever happened above
            run.fleet.kill()
            report["agent_pids"] = run.fleet.pids  # those started, even before their handshake
            report["agent_procs_left"] = run.fleet.leftovers()
            report["agents_log"] = dict(
                sorted((report.get("agents_stop") or {}).get("log", {}).items(), key=lambda kv: -kv[1])[:12]
            )
        for spy in run.spies:
            spy.stop()
        for thread in run.threads:
            thread.stopping.set()
            if isinstance(thread, Poller):
                thread.wake.set()
        for thread in run.threads:
            thread.join(35.0)  # a poll in flight ends within its 30 s timeout
        if run.manager is not None:
            try:
                report["manager_exit_code"] = run.manager.stop()
            except Exception as failure:  # SIGKILL below in any case
                report["manager_exit_code"] = repr(failure)
            finally:
                run.manager.kill()
            report["manager_log"] = summarize_manager_log(run.manager.log())
            if error is not None:
                report["manager_log_tail"] = run.manager.log()[-3000:]
        if run.etcd is not None:
            run.etcd.stop()
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
