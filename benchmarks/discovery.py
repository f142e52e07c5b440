#!/usr/bin/env python3
"""From an endpoint change to the local haproxy serving it, through the whole system.

Starts a real manager and one real agent (process executor, its local haproxy) on 127.0.0.1 in a
temporary directory, a service `app` on that agent that depends on `ext`, and `--backends` tiny TCP
servers on loopback ports. Then `--changes` times, alternately, registers one backend as an endpoint of
`ext` (`POST /api/v1/endpoints/ext`) or deregisters it, and measures the time from the request until the
agent's haproxy lists the server as usable (registration) or no longer lists it (removal), read from its
admin socket every 2 ms. That is the whole path: API -> store -> dispatcher -> agent -> runtime API.

Writes `OUT/discovery.json` and `OUT/discovery.png` and prints a summary.

    .venv/bin/python benchmarks/discovery.py          # 100 changes: ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import machine_info
from treeherd.model.discovery import Dependency, EndpointRegister
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import TaskSpec
from treeherd.proxy.stats import servers_state
from treeherd.testing.ports import listening_socket
from treeherd.testing.processes import AgentProcess, ManagerProcess, reap_processes_under
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

POLL_S = 0.002
WAIT_S = 30.0


def usable(admin: str) -> set[int]:
    try:
        states = asyncio.run(servers_state(admin, timeout_s=1.0))
    except Exception:
        return set()
    return {s.port for s in states if s.admin_state & 1 == 0}


def wait_until(check: Any, what: str) -> float:
    """The monotonic time at which `check()` held."""
    wait_for(check, what, WAIT_S, poll_s=POLL_S)
    return time.monotonic()


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for kind in ("register", "deregister"):
        values = sorted(c["seconds"] * 1000 for c in report["changes"] if c["kind"] == kind)
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=kind)
    ax.set_xlabel("ms from the API request to haproxy serving the change")
    ax.set_ylabel("share of changes")
    ax.set_title(f"treeherd discovery: {len(report['changes'])} endpoint changes (CDF)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--backends", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    changes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="treeherd-discovery-") as tmp:
        root = Path(tmp)
        manager = ManagerProcess(root / "manager")
        agent: AgentProcess | None = None
        sockets = []
        try:
            manager.start()
            agent = AgentProcess(manager.url, root / "agent", "bench", executor="process").start()
            # Held listening sockets: enough for haproxy to see the servers up (its checks connect).
            sockets = [listening_socket() for _ in range(args.backends)]
            ports = [int(sock.getsockname()[1]) for sock in sockets]
            admin = str(root / "agent" / "haproxy" / "admin.sock")
            with Client(manager.url, timeout=30) as client:
                client.request("POST", "/api/v1/nodes", NodeCreate(path="bench"))
                ext = TaskSpec(command=["true"])
                client.request(
                    "POST", "/api/v1/services", ServiceCreate(name="ext", node="bench", replicas=0, task=ext)
                )
                app = TaskSpec(command=["sleep", "3600"], depends_on=[Dependency(service="ext")])
                client.request(
                    "POST", "/api/v1/services", ServiceCreate(name="app", node="bench", replicas=1, task=app)
                )
                wait_until(lambda: os.path.exists(admin), "the agent's haproxy")
                registered: set[int] = set()
                for index in range(args.changes):
                    port = ports[index % len(ports)]
                    if port in registered:
                        started = time.monotonic()
                        client.request("DELETE", f"/api/v1/endpoints/ext/127.0.0.1/{port}")
                        done = wait_until(lambda port=port: port not in usable(admin), "a removal")
                        registered.discard(port)
                        kind = "deregister"
                    else:
                        body = EndpointRegister(address="127.0.0.1", port=port, ttl_s=3600)
                        started = time.monotonic()
                        client.request("POST", "/api/v1/endpoints/ext", body)
                        done = wait_until(lambda port=port: port in usable(admin), "a registration")
                        registered.add(port)
                        kind = "register"
                    changes.append({"kind": kind, "port": port, "seconds": round(done - started, 5)})
        finally:
            for sock in sockets:
                sock.close()
            if agent is not None:
                agent.kill()
            manager.kill()
            reap_processes_under(root)

    def summary(kind: str) -> dict[str, float]:
        values = sorted(c["seconds"] for c in changes if c["kind"] == kind)
        if not values:
            return {"count": 0}
        return {
            "count": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 2),
            "p90_ms": round(values[math.ceil(0.9 * len(values)) - 1] * 1000, 2),  # nearest rank
            "max_ms": round(values[-1] * 1000, 2),
        }

    report = {
        "benchmark": "discovery",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {"changes": args.changes, "backends": args.backends, "poll_s": POLL_S},
        "summary": {"register": summary("register"), "deregister": summary("deregister")},
        "changes": changes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "discovery.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "discovery.png")
    for kind, figures in report["summary"].items():
        if not figures["count"]:
            print(f"  {kind:10} none")
            continue
        print(
            f"  {kind:10} p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms, max {figures['max_ms']} ms"
        )
    print(f"wrote {args.out / 'discovery.json'} and {args.out / 'discovery.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
