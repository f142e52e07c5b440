#!/usr/bin/env python3
"""Load a real treeherd manager through its HTTP API and measure it.

Starts `python -m treeherd manager` (via `treeherd.testing.processes.ManagerProcess`) on 127.0.0.1 in a
temporary directory on the embedded SQLite store, then:

1. creates the service tree level by level (parents before children; fan-out 10: orgs, departments,
   services, sub-services, ...) until `--nodes` nodes exist;
2. adds `--machines` machines (inventory records only: nothing is ever sent to their IPs);
3. binds every machine to a leaf node;
4. reads `GET /api/v1/nodes/{path}/resolved` for random leaves, first sequentially on one keep-alive
   connection, then over `--concurrency` connections;
5. records the manager's RSS and the data directory's size, and restarts the manager on the full data set
   (stop, start, until /healthz answers) to show what loading from disk costs.

Load comes from benchlib.py's asyncio HTTP/1.1 client (keep-alive, one request in flight per
connection) over `--concurrency` connections. Every response is checked (2xx); failures are counted and reported, and the
run aborts once more than `--max-errors` have failed. Results go to `OUT/tree_load.json` and
`OUT/tree_load.png` (`tree_load-quick.*` with `--quick`), and a summary is printed.

    .venv/bin/python benchmarks/tree_load.py            # full size (also: make bench)
    .venv/bin/python benchmarks/tree_load.py --quick    # 1,000 nodes / 5,000 machines
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psutil

from benchlib import (
    ErrorBudget,
    PhaseResult,
    Request,
    TooManyErrors,
    event_loop_runner,
    get_json,
    host_port,
    machine_info,
    merge_phases,
    percentile,
    run_phase,
)
from treeherd.testing import processes
from treeherd.testing.processes import ManagerProcess

FANOUT = 10
LEVEL_NAMES = ("org", "dept", "svc", "sub")  # deeper levels are named l4, l5, ...
WARMUP_READS = 200
_encode = msgspec.json.encode


# ---- the data set ---------------------------------------------------------------------------------
def tree_levels(total: int, fanout: int = FANOUT) -> list[list[str]]:
    """Node paths level by level, breadth first, until `total` nodes exist: `fanout` roots, then
    `fanout` children per node; a partial last level is spread evenly over all its parents (so every
    node above the last level has children, and every leaf is on the deepest level)."""
    levels: list[list[str]] = []
    parents: list[str | None] = [None]
    made = 0
    while made < total:
        depth = len(levels)
        prefix = LEVEL_NAMES[depth] if depth < len(LEVEL_NAMES) else f"l{depth}"
        count = min(fanout * len(parents), total - made)
        level = []
        for i in range(count):
            parent, segment = parents[i % len(parents)], f"{prefix}-{i // len(parents):02d}"
            level.append(segment if parent is None else f"{parent}.{segment}")
        level.sort()
        levels.append(level)
        parents = list(level)
        made += count
    return levels


def node_body(path: str, depth: int, index: int) -> dict[str, Any]:
    """Attributes in the spirit of a real tree: each level sets a little, the rest is inherited."""
    segment = path.rpartition(".")[2]
    body: dict[str, Any] = {"path": path}
    if depth == 0:
        body["labels"] = {"org": segment, "cost-center": f"cc-{index:04d}"}
        body["puppet_environment"] = "production"
        body["puppet_classes"] = {"profile::base": {"ntp_servers": ["ntp1.internal", "ntp2.internal"]}}
    elif depth == 1:
        body["labels"] = {"team": segment}
        body["puppet_classes"] = {"profile::monitoring": {"interval": 60, "alerts": True}}
    elif depth == 2:
        body["labels"] = {"tier": "web" if index % 3 else "backend"}
        body["port"] = 8000 + index % 1000
        body["puppet_classes"] = {"profile::app": {"heap_mb": 512, "workers": 4}}
    else:
        body["labels"] = {"component": segment}
        if index % 7 == 0:
            body["ip_hash"] = True
        if index % 13 == 0:
            body["puppet_exclude"] = ["profile::monitoring"]
    return body


def hostname(i: int) -> str:
    return f"vm-{i:06d}.bench.internal"


def ip_address(i: int) -> str:
    n = i + 1  # 10.0.0.1, 10.0.0.2, ...: only stored, never contacted
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def leaves_of(levels: list[list[str]]) -> list[str]:
    """Paths with no children."""
    parents = {path.rpartition(".")[0] for level in levels for path in level if "." in path}
    return [path for level in levels for path in level if path not in parents]


# ---- the manager ------------------------------------------------------------------------------------
def dir_size(path: Path) -> dict[str, int]:
    """Bytes per file (apparent size) under `path`, and the total."""
    sizes: dict[str, int] = {}
    for item in sorted(path.rglob("*")):
        if item.is_file():
            sizes[str(item.relative_to(path))] = item.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


# ---- the benchmark ----------------------------------------------------------------------------------
async def load_and_measure(args: argparse.Namespace, data_dir: Path, report: dict[str, Any]) -> None:
    rng = random.Random(args.seed)
    budget = ErrorBudget(args.max_errors)
    levels = tree_levels(args.nodes)
    leaves = leaves_of(levels)
    report["tree"] = {
        "nodes": sum(len(level) for level in levels),
        "fanout": FANOUT,
        "depth": len(levels),
        "nodes_per_level": [len(level) for level in levels],
        "leaves": len(leaves),
        "machines_per_leaf": round(args.machines / len(leaves), 2) if leaves else 0,
    }
    phases: dict[str, PhaseResult] = {}

    started = time.perf_counter()
    manager = ManagerProcess(data_dir).start()
    report["startup"] = {"empty_start_seconds": round(time.perf_counter() - started, 3)}
    try:
        host, port = host_port(manager.url)
        server = psutil.Process(manager.pid)
        report["memory"] = {"rss_empty_bytes": server.memory_info().rss}
        print(f"manager pid {manager.pid} at {manager.url}, data in {data_dir}", flush=True)

        # 1. the tree, one level at a time: every parent exists before its children are sent
        level_results = []
        for depth, level in enumerate(levels):
            requests = [
                ("POST", "/api/v1/nodes", _encode(node_body(path, depth, i))) for i, path in enumerate(level)
            ]
            level_results.append(
                await run_phase(
                    f"nodes[{depth}]",
                    host,
                    port,
                    requests,
                    concurrency=args.concurrency,
                    budget=budget,
                    server=server,
                )
            )
        phases["nodes"] = merge_phases("nodes", level_results)
        print_phase(phases["nodes"])

        # 2. machines
        requests = [
            (
                "POST",
                "/api/v1/machines",
                _encode({"hostname": hostname(i), "ips": [ip_address(i)], "machine_kind": "virtual"}),
            )
            for i in range(args.machines)
        ]
        phases["machines"] = await run_phase(
            "machines", host, port, requests, concurrency=args.concurrency, budget=budget, server=server
        )
        print_phase(phases["machines"])

        # 3. one binding per machine, spread evenly over the leaves (in a shuffled order)
        order = list(leaves)
        rng.shuffle(order)
        requests = [
            (
                "POST",
                f"/api/v1/machines/{hostname(i)}/bindings",
                _encode({"node": order[i % len(order)], "weight": 1 + i % 100}),
            )
            for i in range(args.machines)
        ]
        phases["bindings"] = await run_phase(
            "bindings", host, port, requests, concurrency=args.concurrency, budget=budget, server=server
        )
        print_phase(phases["bindings"])

        writes = sum(p.ok for p in phases.values())
        write_seconds = sum(p.seconds for p in phases.values())
        report["phases"] = {name: p.summary() for name, p in phases.items()}
        report["phases"]["nodes"]["levels"] = [r.summary() for r in level_results]
        report["overall_writes"] = {
            "writes": writes,
            "seconds": round(write_seconds, 3),
            "per_second": round(writes / write_seconds, 1) if write_seconds else 0,
        }

        # a sanity check that the data is all there, and what a resolved node looks like
        health = await get_json(host, port, "/healthz")
        sample = await get_json(host, port, f"/api/v1/nodes/{quote(leaves[0])}/resolved")
        bound = await get_json(host, port, f"/api/v1/nodes/{quote(order[0])}/bindings")
        report["revision_after_load"] = health["revision"]
        report["sample_resolved"] = sample
        report["sample_leaf_bindings"] = len(bound)

        # 4. resolved reads of random leaves
        def reads(n: int) -> list[Request]:
            return [("GET", f"/api/v1/nodes/{quote(rng.choice(leaves))}/resolved", None) for _ in range(n)]

        await run_phase(
            "warm-up", host, port, reads(WARMUP_READS), concurrency=1, budget=budget, server=server
        )
        read_results = {
            "sequential": await run_phase(
                "reads (1 connection)", host, port, reads(args.reads), concurrency=1, budget=budget,
                server=server,
            ),
            "concurrent": await run_phase(
                f"reads ({args.concurrency} connections)", host, port, reads(args.reads),
                concurrency=args.concurrency, budget=budget, server=server,
            ),
        }  # fmt: skip
        for result in read_results.values():
            print_phase(result)
        report["reads"] = {name: r.summary() for name, r in read_results.items()}

        # 5. memory and disk with the full data set
        report["memory"]["rss_after_load_bytes"] = server.memory_info().rss
        report["disk"] = {"while_running": dir_size(data_dir)}

        # 6. restart on the full data set
        stops: list[float] = []
        starts: list[float] = []
        rss_after_restart: list[int] = []
        for attempt in range(args.restarts):
            started = time.perf_counter()
            code = manager.stop()
            stops.append(time.perf_counter() - started)
            if code != 0:
                raise RuntimeError(f"the manager exited with {code} on SIGTERM:\n{manager.log()[-2000:]}")
            if attempt == 0:
                report["disk"]["after_stop"] = dir_size(data_dir)
            started = time.perf_counter()
            manager = ManagerProcess(data_dir).start()  # returns once /healthz answers 200
            starts.append(time.perf_counter() - started)
            host, port = host_port(manager.url)
            rss_after_restart.append(psutil.Process(manager.pid).memory_info().rss)
            revision = (await get_json(host, port, "/healthz"))["revision"]
            if revision != report["revision_after_load"]:
                raise RuntimeError(f"restarted at revision {revision}, not {report['revision_after_load']}")
            await get_json(host, port, f"/api/v1/nodes/{quote(leaves[-1])}/resolved")
            print(f"restart {attempt + 1}: stop {stops[-1]:.2f} s, start to healthy {starts[-1]:.2f} s")
        report["startup"].update(
            {
                "stop_seconds": [round(s, 3) for s in stops],
                "restart_seconds": [round(s, 3) for s in starts],
                "restart_median_seconds": round(sorted(starts)[len(starts) // 2], 3) if starts else None,
            }
        )
        report["memory"]["rss_after_restart_bytes"] = rss_after_restart
    finally:
        report["errors"] = {"count": budget.count, "samples": budget.samples}
        try:
            manager.stop()
        finally:
            manager.kill()
    report["_latencies_ms"] = {  # for the plot only; removed before the JSON is written
        **{f"write: {name}": sorted(v / 1e6 for v in p.latencies_ns) for name, p in phases.items()},
        **{f"read: {name}": sorted(v / 1e6 for v in r.latencies_ns) for name, r in read_results.items()},
    }


def print_phase(p: PhaseResult) -> None:
    s = p.summary()
    lat = s["latency_ms"]
    print(
        f"{p.name:<24} {p.ok:>7} ok {p.errors:>3} err {p.seconds:8.2f} s {p.per_second:9.1f}/s"
        f"  p50 {lat.get('p50', math.nan):7.2f} ms  p99 {lat.get('p99', math.nan):7.2f} ms"
        f"  manager cpu {s['server_cpu_utilisation']:4.0%} (main {s['server_main_thread_cpu_utilisation']:4.0%})"
        f" {s['server_cpu_us_per_request']:4d} us/req  client cpu {s['client_cpu_utilisation']:4.0%}"
        f"  others {s['other_cpu_cores']:.2f} cores  iowait {s['machine_cpu_iowait_fraction']:4.0%}"
        f"  disk {s['server_disk_write_bytes_per_request'] / 1024:5.1f} KiB/req",
        flush=True,
    )


def plot(report: dict[str, Any], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_cdf, ax_pct) = plt.subplots(1, 3, figsize=(17, 5.2))
    params = report["parameters"]
    fig.suptitle(
        f"treeherd tree_load: {report['tree']['nodes']:,} nodes, {params['machines']:,} machines + bindings,"
        f" SQLite store, {params['concurrency']} connections, {report['machine']['cpu_count']} CPUs"
        f" ({report['date'][:10]})"
    )

    names = [*report["phases"], "overall"]
    rates = [report["phases"][n]["per_second"] for n in report["phases"]] + [
        report["overall_writes"]["per_second"]
    ]
    bars = ax_rate.bar(names, rates, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"])
    ax_rate.bar_label(bars, labels=[f"{r:,.0f}" for r in rates])
    ax_rate.set_ylabel("writes / s")
    ax_rate.set_title("Write throughput per phase")

    for name, values in latencies.items():
        if values and name.startswith("read"):
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax_cdf.plot(values, ys, label=name)
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (ms, log)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("GET /nodes/{path}/resolved: latency CDF")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend()

    groups = [n for n, v in latencies.items() if v]
    marks = (("p50", 50), ("p90", 90), ("p99", 99))
    width = 0.8 / len(marks)
    for k, (label, p) in enumerate(marks):
        xs = [i + (k - 1) * width for i in range(len(groups))]
        ax_pct.bar(xs, [percentile(latencies[g], p) for g in groups], width, label=label)
    ax_pct.set_xticks(range(len(groups)))
    ax_pct.set_xticklabels([g.replace(": ", ":\n") for g in groups], fontsize=8)
    ax_pct.set_yscale("log")
    ax_pct.set_ylabel("latency (ms, log)")
    ax_pct.set_title("Request latency percentiles")
    ax_pct.legend()

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    mib = 1024 * 1024
    phases = report["phases"]
    reads = report["reads"]
    startup = report["startup"]
    lines = [
        f"tree_load on {report['machine']['cpu_count']} CPUs, Python {report['machine']['python']}:"
        f" {report['tree']['nodes']:,} nodes, {report['parameters']['machines']:,} machines,"
        f" {phases['bindings']['ok']:,} bindings, concurrency {report['parameters']['concurrency']}",
    ]
    for name, p in phases.items():
        lines.append(
            f"  {name:<9} {p['per_second']:>9,.0f} writes/s  (p50 {p['latency_ms']['p50']:.2f} ms,"
            f" p99 {p['latency_ms']['p99']:.2f} ms, manager CPU {p['server_cpu_utilisation']:.0%}"
            f" = {p['server_cpu_us_per_request']} us/request,"
            f" {p['server_disk_write_bytes_per_request'] / 1024:.1f} KiB written/request)"
        )
    lines.append(f"  overall   {report['overall_writes']['per_second']:>9,.0f} writes/s")
    for name, r in reads.items():
        lines.append(
            f"  resolved reads, {name:<10} p50 {r['latency_ms']['p50']:.2f} ms, p99 {r['latency_ms']['p99']:.2f}"
            f" ms, {r['per_second']:,.0f} req/s (concurrency {r['concurrency']})"
        )
    memory = report["memory"]
    disk = report["disk"]
    lines += [
        f"  manager RSS: {memory['rss_after_load_bytes'] / mib:.0f} MiB after the load,"
        f" {min(memory['rss_after_restart_bytes']) / mib:.0f} MiB after a restart"
        f" ({memory['rss_empty_bytes'] / mib:.0f} MiB empty)",
        f"  data dir: {disk['while_running']['total'] / mib:.1f} MiB while running,"
        f" {disk['after_stop']['total'] / mib:.1f} MiB after stop",
        f"  restart with the full data set: median {startup['restart_median_seconds']:.2f} s to healthy"
        f" (runs {startup['restart_seconds']}; empty start {startup['empty_start_seconds']:.2f} s)",
        f"  errors: {report['errors']['count']}",
    ]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=None, help="tree nodes (default 10000; --quick 1000)")
    parser.add_argument("--machines", type=int, default=None, help="machines (default 100000; --quick 5000)")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP connections (default 16)")
    parser.add_argument(
        "--reads", type=int, default=5000, help="resolved reads per read phase (default 5000)"
    )
    parser.add_argument("--restarts", type=int, default=3, help="restarts on the full data set (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="1,000 nodes / 5,000 machines: a sanity run")
    parser.add_argument("--max-errors", type=int, default=10, help="abort after this many failed requests")
    parser.add_argument(
        "--keep", action="store_true", help="keep the data directory (and the manager's log) afterwards"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (leaf order, read paths)")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds a (re)start may take (default 180)"
    )
    args = parser.parse_args(argv)
    if args.nodes is None:
        args.nodes = 1_000 if args.quick else 10_000
    if args.machines is None:
        args.machines = 5_000 if args.quick else 100_000
    for name in ("nodes", "machines", "concurrency", "reads", "restarts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # ManagerProcess waits STARTUP_SECONDS for /healthz; loading a large store may need longer.
    processes.STARTUP_SECONDS = max(processes.STARTUP_SECONDS, args.startup_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "tree_load-quick" if args.quick else "tree_load"
    report: dict[str, Any] = {
        "benchmark": "tree_load",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "nodes": args.nodes,
            "machines": args.machines,
            "concurrency": args.concurrency,
            "reads": args.reads,
            "restarts": args.restarts,
            "quick": args.quick,
            "seed": args.seed,
            "store": "sqlite (embedded, WAL, synchronous=FULL)",
        },
    }
    runner, report["parameters"]["client_loop"] = event_loop_runner()
    started = time.perf_counter()
    aborted: BaseException | None = None
    workdir: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="treeherd-bench-"))
        if args.keep
        else tempfile.TemporaryDirectory(prefix="treeherd-bench-")
    )
    with workdir as tmp, runner:
        if args.keep:
            print(f"keeping {tmp}")
        try:
            runner.run(load_and_measure(args, Path(tmp) / "data", report))
        except* TooManyErrors as group:
            aborted = group.exceptions[0]
    if aborted is not None:
        print(f"aborted: {aborted}", file=sys.stderr)
        for sample in report.get("errors", {}).get("samples", []):
            print(f"  {sample}", file=sys.stderr)
        return 1
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    latencies = report.pop("_latencies_ms")
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    png_path = args.out / f"{stem}.png"
    plot(report, latencies, png_path)
    print()
    print("\n".join(summary_lines(report)))
    print(f"wrote {json_path} and {png_path} ({report['total_seconds']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
