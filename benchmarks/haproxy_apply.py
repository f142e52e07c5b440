#!/usr/bin/env python3
"""The local haproxy: how long endpoint changes take to reach the traffic, through the runtime API.

Starts `--backends` tiny TCP backends (each answers every line with its name) and a `LocalHaproxy` on
127.0.0.1 with one frontend, all in a temporary directory. Then `--changes` times, alternately:
- remove a server: `apply()` without it; `remove_apply_ms` is apply's duration (the `disable server`
  command, after which haproxy routes no new connection to it, is sent within it), then `--probe`
  requests through the local port must all be answered by the remaining servers (`stray_answers`);
- add it back: from the start of `apply()` until the first request through the local port answered by
  it (`add_to_traffic_ms`, requests sent back to back), and apply's duration (`add_apply_ms`).
Then `--reloads` frontend changes (a frontend added and removed): apply's duration with `haproxy -c` and
the reload (`reload_apply_ms`), with a client loop counting failed requests during them. Then `--kills`
times SIGKILL of a backend, with traffic (`kill_to_down_traffic_ms`: until `show servers state` shows it
not running) and without (`kill_to_down_idle_ms`: the active check's work), the backend restarted on the
same port between rounds. Reports the worker pid before and after the runtime changes (no reload).

Writes `OUT/haproxy_apply.json` and `OUT/haproxy_apply.png`. Every wait is bounded.

    .venv/bin/python benchmarks/haproxy_apply.py              # 100 changes, 10 reloads, 5+5 kills: ~25 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine_info
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.stats import info
from treeherd.render.haproxy import LocalProxy, ProxyFrontend, ProxyServer, server_name
from treeherd.testing.backends import Backend, ask
from treeherd.testing.ports import free_port

TIMEOUT_S = 10.0


def server_of(backend: Backend) -> ProxyServer:
    return ProxyServer(name=server_name("127.0.0.1", backend.port), address="127.0.0.1", port=backend.port)


def state(port: int, servers: list[Backend], extra_port: int | None = None) -> LocalProxy:
    frontends = [ProxyFrontend(name="dep", port=port, servers=[server_of(b) for b in servers])]
    if extra_port is not None:
        frontends.append(ProxyFrontend(name="extra", port=extra_port))
    return LocalProxy(frontends=frontends)


async def runtime_changes(
    proxy: LocalHaproxy, port: int, pool: list[Backend], args: argparse.Namespace
) -> dict[str, Any]:
    removes: list[float] = []
    adds_apply: list[float] = []
    adds_traffic: list[float] = []
    stray = 0
    for index in range(args.changes // 2):
        moving = pool[index % len(pool)]
        rest = [b for b in pool if b is not moving]
        started = time.perf_counter()
        await proxy.apply(state(port, rest))
        removes.append((time.perf_counter() - started) * 1000)
        answers = [await ask(port) for _ in range(args.probe)]
        stray += answers.count(moving.name)
        started = time.perf_counter()
        result = await proxy.apply(state(port, pool))
        adds_apply.append((time.perf_counter() - started) * 1000)
        async with asyncio.timeout(TIMEOUT_S):
            while await ask(port) != moving.name:
                pass
        adds_traffic.append((time.perf_counter() - started) * 1000)
        assert not result.reloaded
    return {
        "remove_apply_ms": removes,
        "add_apply_ms": adds_apply,
        "add_to_traffic_ms": adds_traffic,
        "stray_answers": stray,
    }


async def reloads(proxy: LocalHaproxy, port: int, pool: list[Backend], count: int) -> dict[str, Any]:
    durations: list[float] = []
    failures = 0
    answered = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal failures, answered
        while not stop.is_set():
            try:
                await ask(port)
                answered += 1
            except (OSError, TimeoutError):
                failures += 1

    task = asyncio.create_task(client())
    for index in range(count):
        extra = free_port() if index % 2 == 0 else None
        result = await proxy.apply(state(port, pool, extra))
        assert result.reloaded
        durations.append(result.total_ms)
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return {
        "reload_apply_ms": durations,
        "requests_during_reloads": answered,
        "failed_requests_during_reloads": failures,
    }


async def kills(proxy: LocalHaproxy, port: int, pool: list[Backend], count: int) -> dict[str, Any]:
    with_traffic: list[float] = []
    idle: list[float] = []
    slowest: list[float] = []  # per kill with traffic: the slowest request (the one sent to the dead server)
    victim = pool[0]
    name = server_of(victim).name

    async def wait(up: bool) -> float:
        started = time.perf_counter()
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                if any(s.up for s in await proxy.servers_state() if s.name == name) == up:
                    break
                await asyncio.sleep(0.001)
        return (time.perf_counter() - started) * 1000

    for round_ in range(2 * count):
        traffic = round_ % 2 == 0
        await victim.stop()
        if traffic:
            stop = asyncio.Event()

            durations: list[float] = []

            async def client(stop: asyncio.Event = stop, durations: list[float] = durations) -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    # A request that reached the victim as it died fails: only the load matters here.
                    with contextlib.suppress(OSError, TimeoutError):
                        await ask(port)
                    durations.append((time.perf_counter() - started) * 1000)

            task = asyncio.create_task(client())
            with_traffic.append(await wait(up=False))
            # Requests that the check or the observation has not yet spared: keep the client running
            # until the one retried elsewhere (after haproxy's turn-around delay) has come back.
            await asyncio.sleep(0.5)
            stop.set()
            await task
            slowest.append(max(durations))
        else:
            idle.append(await wait(up=False))
        victim = pool[0] = await Backend.start(victim.name, victim.port)  # same port
        await wait(up=True)
    return {
        "kill_to_down_traffic_ms": with_traffic,
        "kill_slowest_request_ms": slowest,
        "kill_to_down_idle_ms": idle,
    }


def summarize(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[math.ceil(0.9 * len(ordered)) - 1], 3),  # nearest rank
        "max": round(ordered[-1], 3),
        "min": round(ordered[0], 3),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("remove_apply_ms", "remove: apply\n(routing stops)"),
        ("add_apply_ms", "add: apply"),
        ("add_to_traffic_ms", "add: apply ->\nfirst answer"),
        ("reload_apply_ms", "new frontend:\ncheck + reload"),
        ("kill_to_down_traffic_ms", "kill -9 -> down\n(traffic)"),
        ("kill_slowest_request_ms", "kill -9: slowest\nrequest after it"),
        ("kill_to_down_idle_ms", "kill -9 -> down\n(idle, check)"),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for x, (key, _label) in enumerate(keys):
        values = report["samples"][key]
        ax.scatter([x] * len(values), values, alpha=0.5, s=12)
        ax.hlines(statistics.median(values), x - 0.3, x + 0.3, colors="black")
    ax.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (log)")
    ax.set_title(
        f"treeherd local haproxy {report['haproxy']}: {report['parameters']['changes']} runtime changes,"
        f" {report['parameters']['reloads']} reloads (line: median)",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pool: list[Backend] = []
    with tempfile.TemporaryDirectory(prefix="treeherd-haproxy-") as tmp:
        proxy = LocalHaproxy(Path(tmp) / "haproxy")
        try:
            for i in range(args.backends):
                pool.append(await Backend.start(f"b{i}"))
            port = free_port()
            await proxy.start(state(port, pool))
            worker = proxy.worker_pid
            samples = await runtime_changes(proxy, port, pool, args)
            worker_after = proxy.worker_pid
            samples.update(await reloads(proxy, port, pool, args.reloads))
            samples.update(await kills(proxy, port, pool, args.kills))
            version = await _version(proxy)
        finally:
            await proxy.stop()
            for backend in pool:
                await backend.stop()
    stats = {key: summarize(value) for key, value in samples.items() if isinstance(value, list)}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "haproxy": version,
        # The output directory relative to the checkout, so results name no machine's paths.
        "parameters": vars(args) | {"out": str(args.out).removeprefix(f"{Path(__file__).parent.parent}/")},
        "no_reload_during_runtime_changes": worker == worker_after,
        "stray_answers_after_removal": samples["stray_answers"],
        "failed_requests_during_reloads": samples["failed_requests_during_reloads"],
        "requests_during_reloads": samples["requests_during_reloads"],
        "summary_ms": stats,
        "samples": {key: value for key, value in samples.items() if isinstance(value, list)},
    }


async def _version(proxy: LocalHaproxy) -> str:
    return (await info(proxy.admin_socket)).get("Version", "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--changes", type=int, default=100, help="runtime changes (half removals, half adds)")
    parser.add_argument("--probe", type=int, default=20, help="requests after each removal")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--kills", type=int, default=5, help="rounds with traffic, and as many idle")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "haproxy_apply.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "haproxy_apply.png")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
