#!/usr/bin/env python3
"""How fast the web console's pages are with a large tree: 10,000 nodes and 100,000 machines.

Starts a manager on 127.0.0.1 in a temporary directory (embedded SQLite), loads the tree, the machines
and a binding per machine through the HTTP API (the data set of tree_load.py: fan-out 10, every
machine bound to a leaf), then for each console page:

1. the server's time: `--reads` sequential GETs of the page's HTML on one keep-alive connection on
   loopback (the request's whole round trip, so an upper bound of the render time);
2. the browser's load time: Debian's chromium (Playwright) opens the page `--loads` times, and the
   page's Navigation Timing gives the time from navigation start to the load event (HTML, scripts,
   styles; the event stream's connection is not part of it).

The goal is 300 ms or less per page. Results go to `OUT/ui_render.json` and `OUT/ui_render.png`.

    .venv/bin/python benchmarks/ui_render.py                     # 10,000 nodes / 100,000 machines
    .venv/bin/python benchmarks/ui_render.py --nodes 1000 --machines 10000 --out /tmp/x
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psutil

from benchlib import (
    Connection,
    ErrorBudget,
    code_version,
    distribution,
    host_port,
    machine_info,
    run_phase,
)
from tree_load import hostname, ip_address, leaves_of, node_body, tree_levels
from treeherd.testing.processes import ManagerProcess

CHROMIUM = "/usr/bin/chromium"
GOAL_MS = 300.0
_encode = msgspec.json.encode


def pages(levels: list[list[str]], leaves: list[str]) -> list[tuple[str, str]]:
    """(name, target) of each page measured: the widest and the deepest views the console has."""
    mid = levels[1][0] if len(levels) > 1 else levels[0][0]
    return [
        ("tree", "/ui/tree"),
        ("tree level (children of a node)", f"/ui/tree/children?path={quote(mid)}"),
        ("tree search (path)", "/ui/tree/search?q=sub-0"),
        ("tree search (label)", "/ui/tree/search?q=tier%3Dweb"),
        ("node (leaf, machines bound)", f"/ui/nodes/{leaves[len(leaves) // 2]}"),
        ("node (top, 1,000 below)", f"/ui/nodes/{levels[0][0]}"),
        ("machines", "/ui/machines"),
        ("machines (prefix)", "/ui/machines?prefix=vm-05"),
        ("services", "/ui/services"),
        ("edge", "/ui/edge"),
        ("events", "/ui/events"),
    ]


async def load_data(url: str, server: psutil.Process, nodes: int, machines: int) -> dict[str, Any]:
    host, port = host_port(url)
    budget = ErrorBudget(10)
    levels = tree_levels(nodes)
    leaves = leaves_of(levels)
    started = time.perf_counter()
    for depth, level in enumerate(levels):
        requests = [("POST", "/api/v1/nodes", _encode(node_body(p, depth, i))) for i, p in enumerate(level)]
        await run_phase("nodes", host, port, requests, concurrency=8, budget=budget, server=server)
    made = [
        ("POST", "/api/v1/machines", _encode({"hostname": hostname(i), "ips": [ip_address(i)]}))
        for i in range(machines)
    ]
    await run_phase("machines", host, port, made, concurrency=8, budget=budget, server=server)
    bound = [
        (
            "POST",
            f"/api/v1/machines/{hostname(i)}/bindings",
            _encode({"node": leaves[i % len(leaves)], "weight": 1 + i % 5}),
        )
        for i in range(machines)
    ]
    await run_phase("bindings", host, port, bound, concurrency=8, budget=budget, server=server)
    return {
        "levels": levels,
        "leaves": leaves,
        "seconds": time.perf_counter() - started,
        "errors": budget.count,
    }


async def server_times(url: str, targets: list[tuple[str, str]], reads: int) -> dict[str, Any]:
    host, port = host_port(url)
    conn = Connection(host, port)
    found: dict[str, Any] = {}
    try:
        for name, target in targets:
            status, body = await conn.request("GET", target)  # warm-up
            if status != 200:
                raise SystemExit(f"{target}: HTTP {status}")
            times = []
            for _ in range(reads):
                started = time.perf_counter()
                status, body = await conn.request("GET", target)
                times.append((time.perf_counter() - started) * 1000)
            found[name] = {"target": target, "bytes": len(body), "ms": distribution(sorted(times))}
    finally:
        conn.close()
    return found


def browser_times(url: str, targets: list[tuple[str, str]], loads: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    found: dict[str, Any] = {}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            for name, target in targets:
                times = []
                for _ in range(loads + 1):
                    page.goto(url + target, wait_until="load")
                    timing = page.evaluate(
                        "(() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return n.loadEventEnd - n.startTime; })()"
                    )
                    times.append(float(timing))
                found[name] = {"ms": distribution(sorted(times[1:]))}  # the first load fills the cache
            found["_console_errors"] = errors
        finally:
            browser.close()
    return found


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(record["server"])
    server = [record["server"][n]["ms"]["p50"] for n in names]
    browser = [record["browser"][n]["ms"]["p50"] for n in names]
    fig, ax = plt.subplots(figsize=(10, 5))
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], server, height=0.4, label="server (HTML round trip), p50")
    ax.barh([y + 0.2 for y in ys], browser, height=0.4, label="browser (to the load event), p50")
    ax.axvline(GOAL_MS, color="#b3261e", linestyle="--", label=f"goal {GOAL_MS:g} ms")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    p = record["parameters"]
    ax.set_title(f"console pages with {p['nodes']:,} nodes and {p['machines']:,} machines")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--machines", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    info = machine_info()
    info["code"] = code_version()
    with (
        tempfile.TemporaryDirectory(prefix="treeherd-ui-") as tmp,
        ManagerProcess(Path(tmp) / "data") as manager,
    ):
        server = psutil.Process(manager.pid)
        loaded = asyncio.run(load_data(manager.url, server, args.nodes, args.machines))
        print(f"loaded {args.nodes} nodes, {args.machines} machines in {loaded['seconds']:.0f} s")
        targets = pages(loaded["levels"], loaded["leaves"])
        server_ms = asyncio.run(server_times(manager.url, targets, args.reads))
        browser_ms = browser_times(manager.url, targets, args.loads)
    errors = browser_ms.pop("_console_errors")
    record = {
        "benchmark": "ui_render",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "command": "benchmarks/ui_render.py " + " ".join(sys.argv[1:]),
        "parameters": {
            "nodes": args.nodes,
            "machines": args.machines,
            "reads": args.reads,
            "loads": args.loads,
            "goal_ms": GOAL_MS,
        },
        "load_seconds": loaded["seconds"],
        "load_errors": loaded["errors"],
        "server": server_ms,
        "browser": browser_ms,
        "console_errors": errors,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ui_render.json").write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out / "ui_render.png")
    for name in server_ms:
        s, b = server_ms[name]["ms"], browser_ms[name]["ms"]
        print(f"{name:40s} server p50 {s['p50']:7.1f} ms max {s['max']:7.1f}  browser p50 {b['p50']:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
