#!/usr/bin/env python3
"""Whole-process latency of `treeherd enc HOSTNAME` (what Puppet runs on every agent run) as the tree grows.

Starts `python -m treeherd manager` (via `treeherd.testing.processes.ManagerProcess`) on 127.0.0.1 in a
temporary directory on the embedded SQLite store, syncs a class catalog, builds a tree (`--nodes`, fan-out
10, classes with parameters at three levels, environments at the roots), then for each size in `--sizes`
(cumulative: 1,000 then 100,000 hosts by default):

1. adds machines and binds each to a leaf through the HTTP API, over `--concurrency` keep-alive
   connections (tree_load.py's client; nothing is ever sent to the machines' addresses);
2. runs the real `treeherd enc HOST` command `--runs` times, one after the other, for random hosts, and
   times each process from spawn to exit (the ENC's cache goes to a temp dir, so each run also writes it);
3. times `GET /api/v1/enc/HOST` over one keep-alive connection (`--reads` requests): the manager's share.

As baselines it also times `python -c pass` (the interpreter's own start-up) and the full CLI
(`treeherd tree ls corp`), so the figures show what the ENC path costs on top of starting Python.
Results go to `OUT/enc.json` and `OUT/enc.png` (`enc-quick.*` with `--quick`).

    .venv/bin/python benchmarks/enc.py             # 1,000 and 100,000 hosts
    .venv/bin/python benchmarks/enc.py --quick     # 200 and 2,000 hosts: a sanity run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    Connection,
    ErrorBudget,
    Request,
    host_port,
    machine_info,
    percentile,
    run_phase,
)
from tree_load import hostname, ip_address, leaves_of, tree_levels
from treeherd.testing import processes
from treeherd.testing.processes import ManagerProcess

CLASSES = [
    {"name": "profile::base", "params": [{"name": "ntp_servers", "type": "Array[String]", "default": "[]"}]},
    {"name": "profile::monitoring", "params": [{"name": "interval"}, {"name": "alerts", "default": "true"}]},
    {"name": "profile::app", "params": [{"name": "heap_mb"}, {"name": "workers", "default": "2"}]},
]


def node_body(path: str, depth: int, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"path": path}
    if depth == 0:
        body["puppet_environment"] = "production"
        body["puppet_classes"] = {"profile::base": {"ntp_servers": ["ntp1.internal", "ntp2.internal"]}}
    elif depth == 1:
        body["puppet_classes"] = {"profile::monitoring": {"interval": 60, "alerts": True}}
    elif depth == 2:
        body["puppet_classes"] = {"profile::app": {"heap_mb": 512 + index % 4 * 256, "workers": 4}}
    elif index % 13 == 0:
        body["puppet_exclude"] = ["profile::monitoring"]
    return body


def timed_runs(command: list[str], hosts: list[str], env: dict[str, str]) -> list[float]:
    """Milliseconds from spawn to exit of `command + [host]`, one process after the other."""
    times = []
    for host in hosts:
        started = time.perf_counter()
        result = subprocess.run([*command, host], capture_output=True, env=env, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        if result.returncode != 0 or not result.stdout.startswith(b"---"):
            raise RuntimeError(f"{' '.join(command)} {host} failed: {result.stderr.decode()[:300]}")
        times.append(elapsed)
    return times


def summary(values_ms: list[float]) -> dict[str, float]:
    values = sorted(values_ms)
    return {
        "runs": len(values),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(values[-1], 2),
        "mean": round(sum(values) / len(values), 2),
    }


async def build(args: argparse.Namespace, manager: ManagerProcess, report: dict[str, Any]) -> None:
    host, port = host_port(manager.url)
    server = psutil.Process(manager.pid)
    budget = ErrorBudget(args.max_errors)
    rng = random.Random(args.seed)
    conn = Connection(host, port)
    try:
        status, payload = await conn.request(
            "PUT", "/api/v1/puppet/classes", json.dumps({"classes": CLASSES, "source": "bench"}).encode()
        )
        if status != 200:
            raise RuntimeError(f"catalog sync: HTTP {status} {payload[:300]!r}")
    finally:
        conn.close()
    levels = tree_levels(args.nodes)
    leaves = leaves_of(levels)
    for depth, level in enumerate(levels):
        requests: list[Request] = [
            ("POST", "/api/v1/nodes", json.dumps(node_body(p, depth, i)).encode())
            for i, p in enumerate(level)
        ]
        await run_phase(
            f"nodes {depth}", host, port, requests, concurrency=args.concurrency, budget=budget, server=server
        )
    report["tree"] = {
        "nodes": sum(len(level) for level in levels),
        "leaves": len(leaves),
        "depth": len(levels),
    }
    loaded = 0
    env = {**os.environ, "TREEHERD_MANAGER": manager.url}
    treeherd = str(Path(sys.executable).with_name("treeherd"))
    report["sizes"] = {}
    for size in args.sizes:
        started = time.perf_counter()
        machines: list[Request] = [
            (
                "POST",
                "/api/v1/machines",
                json.dumps(
                    {"hostname": hostname(i), "ips": [ip_address(i)], "labels": {"rack": f"r{i % 40}"}}
                ).encode(),
            )
            for i in range(loaded, size)
        ]
        await run_phase(
            "machines", host, port, machines, concurrency=args.concurrency, budget=budget, server=server
        )
        bindings: list[Request] = [
            (
                "POST",
                f"/api/v1/machines/{hostname(i)}/bindings",
                json.dumps({"node": leaves[i % len(leaves)]}).encode(),
            )
            for i in range(loaded, size)
        ]
        await run_phase(
            "bindings", host, port, bindings, concurrency=args.concurrency, budget=budget, server=server
        )
        load_seconds = time.perf_counter() - started
        loaded = size
        print(f"{size:,} hosts loaded in {load_seconds:.1f} s", flush=True)
        sample = [hostname(rng.randrange(size)) for _ in range(args.runs)]
        with tempfile.TemporaryDirectory(prefix="treeherd-enc-cache-") as cache:
            env["TREEHERD_ENC_CACHE"] = cache
            timed_runs([treeherd, "enc"], sample[:5], env)  # warm the page cache
            whole = timed_runs([treeherd, "enc"], sample, env)
        reads: list[Request] = [
            ("GET", f"/api/v1/enc/{hostname(rng.randrange(size))}", None) for _ in range(args.reads)
        ]
        phase = await run_phase("enc reads", host, port, reads, concurrency=1, budget=budget, server=server)
        served = phase.summary()
        report["sizes"][str(size)] = {
            "hosts": size,
            "load_seconds": round(load_seconds, 1),
            "treeherd_enc_process_ms": summary(whole),
            "manager_get_enc_ms": served["latency_ms"],
            "manager_cpu_us_per_enc_request": served["server_cpu_us_per_request"],
            "manager_rss_bytes": server.memory_info().rss,
            "_whole_ms": whole,
            "_served_ms": sorted(v / 1e6 for v in phase.latencies_ns),
        }
        s = report["sizes"][str(size)]
        print(
            f"{size:>7,} hosts: treeherd enc p50 {s['treeherd_enc_process_ms']['p50']:.1f} ms"
            f" p90 {s['treeherd_enc_process_ms']['p90']:.1f} ms p99 {s['treeherd_enc_process_ms']['p99']:.1f} ms;"
            f" GET /api/v1/enc p50 {served['latency_ms']['p50']:.3f} ms p99 {served['latency_ms']['p99']:.3f} ms,"
            f" {served['server_cpu_us_per_request']} us manager CPU per request",
            flush=True,
        )
    report["baselines_ms"] = {
        "python -c pass": summary(timed_baseline([sys.executable, "-c", "pass"], args.baseline_runs, env)),
        "treeherd tree ls (full CLI)": summary(
            timed_baseline(
                [treeherd, "tree", "ls", "org-00.dept-00", "--format", "json"], args.baseline_runs, env
            )
        ),
    }
    for name, values in report["baselines_ms"].items():
        print(f"baseline {name}: p50 {values['p50']:.1f} ms p90 {values['p90']:.1f} ms")


def timed_baseline(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, env=env, timeout=60, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_pct) = plt.subplots(1, 2, figsize=(13, 5))
    fig.suptitle(
        f"treeherd enc: whole-process latency, {report['tree']['nodes']:,} tree nodes,"
        f" {report['machine']['cpu_count']} CPUs ({report['date'][:10]})"
    )
    for size, data in report["sizes"].items():
        values = sorted(data["_whole_ms"])
        ax_cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=f"{int(size):,} hosts")
    ax_cdf.axvline(100, color="grey", linestyle="--", label="100 ms target (median)")
    ax_cdf.set_xlabel("treeherd enc HOST, spawn to exit (ms)")
    ax_cdf.set_ylabel("fraction of runs")
    ax_cdf.set_title("latency CDF")
    ax_cdf.grid(True, alpha=0.3)
    ax_cdf.legend()
    groups = [f"{int(s):,} hosts" for s in report["sizes"]]
    marks = (("p50", 50), ("p90", 90), ("p99", 99))
    width = 0.8 / len(marks)
    for k, (label, p) in enumerate(marks):
        xs = [i + (k - 1) * width for i in range(len(groups))]
        ys = [percentile(sorted(d["_whole_ms"]), p) for d in report["sizes"].values()]
        bars = ax_pct.bar(xs, ys, width, label=label)
        ax_pct.bar_label(bars, labels=[f"{y:.0f}" for y in ys], fontsize=8)
    base = report["baselines_ms"]["python -c pass"]["p50"]
    ax_pct.axhline(base, color="black", linestyle=":", label=f"python -c pass p50 ({base:.0f} ms)")
    ax_pct.set_xticks(range(len(groups)))
    ax_pct.set_xticklabels(groups)
    ax_pct.set_ylabel("ms")
    ax_pct.set_title("percentiles per tree size")
    ax_pct.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="host counts, ascending (default 1000 100000)")
    parser.add_argument("--nodes", type=int, default=1_000, help="tree nodes (default 1000)")
    parser.add_argument("--runs", type=int, default=300, help="treeherd enc processes per size (default 300)")
    parser.add_argument("--reads", type=int, default=5_000, help="GET /api/v1/enc per size (default 5000)")
    parser.add_argument("--baseline-runs", type=int, default=100, help="runs of each baseline (default 100)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections while loading (default 16)")
    parser.add_argument("--quick", action="store_true", help="200 and 2,000 hosts, fewer runs: a sanity run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--max-errors", type=int, default=10, help="abort after this many failed requests")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [200, 2_000] if args.quick else [1_000, 100_000]
    if args.quick:
        args.runs, args.reads, args.baseline_runs, args.nodes = 40, 500, 20, 200
    if args.sizes != sorted(args.sizes) or args.sizes[0] < 1:
        parser.error("--sizes must be positive and ascending (hosts are added cumulatively)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("treeherd", path=str(Path(sys.executable).parent)) is None:
        print(
            "error: run with the virtual environment's python (its bin/ holds the treeherd command)",
            file=sys.stderr,
        )
        return 2
    processes.STARTUP_SECONDS = max(processes.STARTUP_SECONDS, 180.0)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "enc-quick" if args.quick else "enc"
    report: dict[str, Any] = {
        "benchmark": "enc",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {k: v for k, v in vars(args).items() if k != "out"},
    }
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="treeherd-bench-enc-") as tmp,
        ManagerProcess(Path(tmp) / "data") as manager,
    ):
        asyncio.run(build(args, manager, report))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    plot(report, args.out / f"{stem}.png")
    for data in report["sizes"].values():
        data.pop("_whole_ms")
        data.pop("_served_ms")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / stem}.json and .png ({report['total_seconds']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
