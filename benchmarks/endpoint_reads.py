#!/usr/bin/env python3
"""A service's endpoints among many: the store's index by service against the scan it replaced.

Loads `--endpoints` registrations of `--services` services (the same number each; three in four a
task's on one of `--machines` machines, the rest external) into a store state, then times, per call:
`service_endpoints` for one service (the index), the same read by a scan of every endpoint (as it was
done before the index), `dependency_message` (what the dispatcher sends an agent), and a machine's task
registrations (the endpoint registry's read on every agent report). Also the state's load of all the
endpoints and one endpoint's create and delete, which pay for keeping the indexes.

    .venv/bin/python benchmarks/endpoint_reads.py       # 50,000 endpoints of 2,500 services: ~6 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from benchlib import machine_info
from treeherd.core.edge.discovery import service_endpoints, static_endpoints
from treeherd.core.view import View
from treeherd.manager.dependencies import dependency_message
from treeherd.model.discovery import Endpoint
from treeherd.model.ops import Create, Delete
from treeherd.model.services import Service
from treeherd.store.state import State

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def endpoints(count: int, services: int, machines: int) -> list[Endpoint]:
    found = []
    for i in range(count):
        service, n = i % services, i // services
        task = i % 4 != 0
        found.append(
            Endpoint(
                id=f"e{i:07d}",
                created_at=T0,
                updated_at=T0,
                version=1,
                service=f"svc-{service:05d}",
                address=f"10.{n % 256}.{service // 256 % 256}.{service % 256}",
                port=8000 + n,
                source="task" if task else "external",
                machine_id=f"m{i % machines:05d}" if task else None,
                task_id=f"t{i}" if task else None,
            )
        )
    return found


def scan_service_endpoints(view: View, name: str) -> list[Endpoint]:
    """`service_endpoints` as it was before the index: a scan of every endpoint."""
    registered = [e for e in view.all(Endpoint) if e.service == name]
    service = view.lookup(Service, "name", name)
    static = static_endpoints(view, service) if service is not None else []

    def sortable(address: str) -> tuple[int, int]:
        ip = ip_address(address)
        return (ip.version, int(ip))

    return sorted([*registered, *static], key=lambda e: (sortable(e.address), e.port, e.source))


def per_call(fn: Callable[[], object], *, budget_s: float = 0.3, rounds: int = 7) -> dict[str, float]:
    """Seconds per call: `rounds` rounds of as many calls as fit in `budget_s`; median and best."""
    start = time.perf_counter()
    fn()
    calls = max(1, int(budget_s / max(time.perf_counter() - start, 1e-7)))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "calls_per_round": calls}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=50_000)
    parser.add_argument("--services", type=int, default=2_500)
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    objects = endpoints(args.endpoints, args.services, args.machines)
    loads = []
    for _ in range(3):
        state = State()
        start = time.perf_counter()
        state.load(objects, 1)
        loads.append(time.perf_counter() - start)
    name, machine_id = f"svc-{args.services // 2:05d}", f"m{args.machines // 2:05d}"
    indexed, scanned = service_endpoints(state, name), scan_service_endpoints(state, name)
    assert indexed == scanned, "the index and the scan disagree"
    extra = Endpoint(id="extra", created_at=T0, updated_at=T0, service=name, address="10.255.255.1", port=1)

    def write() -> None:
        events, _ = state.apply([Create(extra)], state.revision + 1)
        state.apply([Delete(events[0].object)], state.revision + 1)

    figures: dict[str, Any] = {
        "load_all_s": min(loads),
        "service_endpoints_index": per_call(lambda: service_endpoints(state, name)),
        "service_endpoints_scan": per_call(lambda: scan_service_endpoints(state, name)),
        "dependency_message": per_call(lambda: dependency_message(state, name)),
        "machine_registrations": per_call(
            lambda: [e for e in state.where(Endpoint, "machine", machine_id) if e.source == "task"]
        ),
        "create_and_delete": per_call(write),
    }
    report = {
        "benchmark": "endpoint_reads",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        # The output directory relative to the checkout, so results name no machine's paths.
        "parameters": vars(args) | {"out": str(args.out).removeprefix(f"{Path(__file__).parent.parent}/")},
        "service_size": len(indexed),
        "machine_size": len(state.where(Endpoint, "machine", machine_id)),
        "figures": figures,
        "machine": machine_info(),
    }
    print(f"{args.endpoints:,} endpoints of {args.services:,} services; {name} has {len(indexed)}")
    print(f"  load all (min of 3)                  {figures['load_all_s'] * 1e3:9.1f} ms")
    for key, label in [
        ("service_endpoints_index", "service_endpoints, index"),
        ("service_endpoints_scan", "service_endpoints, scan"),
        ("dependency_message", "dependency_message"),
        ("machine_registrations", f"a machine's registrations ({report['machine_size']})"),
        ("create_and_delete", "create + delete one endpoint"),
    ]:
        got = figures[key]
        print(f"  {label:36} {got['median_s'] * 1e6:9.1f} µs  (best {got['min_s'] * 1e6:.1f})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "endpoint_reads.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "endpoint_reads.png")
    print(f"wrote {args.out / 'endpoint_reads.json'} and {args.out / 'endpoint_reads.png'}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = report["figures"]
    labels = {
        "service_endpoints_scan": "a service's endpoints,\nby a scan (before)",
        "service_endpoints_index": "a service's endpoints,\nby the index",
        "dependency_message": "dependency feed\nmessage",
        "machine_registrations": "a machine's\nregistrations",
        "create_and_delete": "create + delete\none endpoint",
    }
    values = [figures[key]["median_s"] * 1e6 for key in labels]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(list(labels.values()), values, color=["#b55", "#5a5", "#58b", "#58b", "#888"])
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("µs per call (median, log scale)")
    parameters = report["parameters"]
    ax.set_title(
        f"treeherd store reads: {parameters['endpoints']:,} endpoints of {parameters['services']:,} services",
        fontsize=10,
    )
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
