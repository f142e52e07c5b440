#!/usr/bin/env python3
"""What TLS and tokens cost: API requests and agent-channel round trips with and without them, in one run.

Starts three managers on 127.0.0.1 in temporary directories (`treeherd.testing.processes.ManagerProcess`):
one plain, one with `--require-auth` (tokens over plain HTTP: what the token check costs alone) and one
with `--tls --require-auth`. Then, in `--rounds` rounds, each measuring the three in turn, so that the
machine's load falls on all alike:

1. API: `GET /api/v1/nodes` over one keep-alive connection for `--seconds` (the CLI's client; on the
   TLS manager with an admin token and the cluster CA): requests per second, the handshake made once.
2. API, a new connection per request (`--handshakes` requests): what each TLS handshake adds.
3. Agent channel: one agent session (on the TLS manager over wss with a node certificate from a real
   join) sending heartbeats and waiting for their acknowledgement for `--seconds`: round trips per
   second. A manager answers every second heartbeat (`ANSWER_EVERY`), so a round trip is that many
   heartbeats and the one answer.

For the two steady-state measures (1 and 3) it also records the CPU time per operation in the manager
and in the benchmark's own process (the client), read from the OS: on a shared machine the rates move
with whatever else runs, the CPU an operation takes much less.

Medians over the rounds go to `OUT/tls_overhead.json` and `OUT/tls_overhead.png`.

    .venv/bin/python benchmarks/tls_overhead.py            # 5 rounds of 5 s
    .venv/bin/python benchmarks/tls_overhead.py --quick    # 2 rounds of 1 s: a sanity run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_info
from treeherd.core.tasks.dispatch.heartbeats import ANSWER_EVERY
from treeherd.model.wire import Heartbeat, HeartbeatAck, Register, SessionStarted
from treeherd.runtime import event_loop_runner, utc_now
from treeherd.testing.processes import ManagerProcess
from treeherd.transport.channel import connect_agent
from treeherd.transport.client import Client
from treeherd.transport.join import join, node_tls
from treeherd.transport.pki import client_context

HERE = Path(__file__).resolve().parent


class Side:
    """One manager and how to talk to it."""

    def __init__(self, name: str, manager: ManagerProcess, token: str, tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.manager = manager
        self.token = token
        self.tls = tls
        self.agent_tls: ssl.SSLContext | None = None
        self.agent_token = ""

    def client(self) -> Client:
        return Client(self.manager.url, timeout=30, token=self.token, tls=self.tls)


def api_keepalive(side: Side, seconds: float) -> float:
    with side.client() as client:
        client.get("/api/v1/nodes", list)
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            client.get("/api/v1/nodes", list)
            done += 1
    return done / elapsed


def api_handshakes(side: Side, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        with side.client() as client:
            client.get("/api/v1/nodes", list)
    return count / (time.perf_counter() - start)


async def agent_round_trips(side: Side, seconds: float, hostname: str) -> float:
    channel = await connect_agent(side.manager.url, token=side.agent_token, tls=side.agent_tls)
    try:
        await channel.send(Register(hostname=hostname))
        session_id = ""
        while not session_id:
            message = await channel.receive()
            if isinstance(message, SessionStarted):
                session_id = message.session_id
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(ANSWER_EVERY):
                await channel.send(Heartbeat(session_id=session_id))
            while not isinstance(await channel.receive(), HeartbeatAck):
                pass
            done += 1
        return done / elapsed
    finally:
        await channel.close()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(result["medians"]["plain"])
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.6))
    for axis, measure in zip(axes, measures, strict=True):
        values = [result["medians"][side][measure] for side in ("plain", "token", "tls")]
        axis.bar(["plain", "token", "TLS + token"], values, color=["#8899aa", "#6688aa", "#336699"])
        axis.set_title(measure.replace("_", " "), fontsize=9)
        axis.set_ylabel("per second")
    fig.suptitle(f"TLS overhead ({result['parameters']['rounds']} rounds, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def with_cpu(side: Side, run: Callable[[], float], seconds: float) -> tuple[float, float, float]:
    """A steady-state measure's rate, with the CPU time each operation took in the manager and in
    this client process (µs): less sensitive than the rate to what else the machine runs."""
    manager = psutil.Process(side.manager.process.pid if side.manager.process else 0)
    manager_before, client_before = sum(manager.cpu_times()[:2]), time.process_time()
    rate = run()
    operations = max(rate * seconds, 1.0)
    manager_us = (sum(manager.cpu_times()[:2]) - manager_before) / operations * 1e6
    client_us = (time.process_time() - client_before) / operations * 1e6
    return rate, manager_us, client_us


def agent_rate(side: Side, seconds: float) -> float:
    # On the loop a real agent runs (`treeherd agent` uses uvloop where installed): the standard
    # loop's TLS is written in Python and would measure the benchmark's client rather than treeherd.
    with event_loop_runner() as runner:
        return runner.run(agent_round_trips(side, seconds, f"bench-{side.name}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.handshakes = 2, 1.0, 50
    info = machine_info()
    rates: dict[str, dict[str, list[float]]] = {"plain": {}, "token": {}, "tls": {}}
    cpu: dict[str, dict[str, list[float]]] = {"plain": {}, "token": {}, "tls": {}}
    with tempfile.TemporaryDirectory(prefix="treeherd-tls-bench-") as tmp:
        root = Path(tmp)
        with (
            ManagerProcess(root / "plain") as plain_manager,
            ManagerProcess(root / "token", extra_args=("--require-auth",)) as token_manager,
            ManagerProcess(root / "tls", extra_args=("--tls", "--require-auth")) as tls_manager,
        ):
            ca = (root / "tls" / "ca.crt").read_bytes()
            admin = (root / "tls" / "secrets" / "admin.token").read_text().strip()
            token_admin = (root / "token" / "secrets" / "admin.token").read_text().strip()
            sides = [
                Side("plain", plain_manager, "", None),
                Side("token", token_manager, token_admin, None),
                Side("tls", tls_manager, admin, client_context(ca)),
            ]
            with sides[1].client() as client:
                agent_token = client.request(
                    "POST", "/api/v1/tokens", {"name": "bench", "role": "agent"}, type=dict
                )
            sides[1].agent_token = agent_token["token"]
            with sides[2].client() as client:
                token = client.get("/api/v1/cluster/join-tokens", dict)["worker"]
            join(tls_manager.url, root / "node", token, utc_now())
            sides[2].agent_tls = node_tls(root / "node")
            for number in range(args.rounds):
                for side in sides:
                    steady = {
                        "api_requests_keepalive": lambda side=side: api_keepalive(side, args.seconds),
                        "agent_heartbeat_round_trips": lambda side=side: agent_rate(side, args.seconds),
                    }
                    measured: dict[str, float] = {}
                    for key, run in steady.items():
                        measured[key], manager_us, client_us = with_cpu(side, run, args.seconds)
                        cpu[side.name].setdefault(f"{key}_manager_us", []).append(round(manager_us, 1))
                        cpu[side.name].setdefault(f"{key}_client_us", []).append(round(client_us, 1))
                    measured["api_requests_new_connection"] = api_handshakes(side, args.handshakes)
                    for key, value in measured.items():
                        rates[side.name].setdefault(key, []).append(round(value, 1))
                    print(
                        f"round {number + 1} {side.name}: "
                        + ", ".join(f"{k} {v:,.0f}/s" for k, v in measured.items())
                    )
    medians = {side: {k: round(statistics.median(v), 1) for k, v in by.items()} for side, by in rates.items()}
    cpu_medians = {
        side: {k: round(statistics.median(v), 1) for k, v in by.items()} for side, by in cpu.items()
    }
    cpu_cost = {
        side: {k: round(cpu_medians[side][k] / cpu_medians["plain"][k] - 1, 3) for k in cpu_medians["plain"]}
        for side in ("token", "tls")
    }
    cost = {
        side: {k: round(1 - medians[side][k] / medians["plain"][k], 3) for k in medians["plain"]}
        for side in ("token", "tls")
    }
    result = {
        "benchmark": "tls_overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "parameters": {"rounds": args.rounds, "seconds": args.seconds, "handshakes": args.handshakes},
        "rates": rates,
        "medians": medians,
        "cpu_us_per_operation": cpu,
        "cpu_medians": cpu_medians,
        "cpu_cost": cpu_cost,
        "tls_cost": cost,
    }
    name = "tls_overhead-quick" if args.quick else "tls_overhead"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / f"{name}.png")
    print(
        json.dumps(
            {"medians": medians, "tls_cost": cost, "cpu_medians": cpu_medians, "cpu_cost": cpu_cost}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
