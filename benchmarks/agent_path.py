#!/usr/bin/env python3
"""A hollow agent's own path, without a manager or a network: how much CPU its worker, task runners and
local DB spend per task, from the assignment message to every task RUNNING and its report acknowledged.

`--agents` real `treeherd.agent.worker.Worker`s (hollow executor, local DB on the event loop as the
schedule benchmark's `--agent-db-inline`) run in this process. Each is sent its share of `--tasks` in
`--batches` assignment messages, encoded as the manager encodes them and decoded as the agent's session
decodes them; every report is acknowledged at once. No heartbeats, no WebSocket, no harness record per
task: what `schedule.py` reports as the agents' CPU per task, minus the session, the harness and the
machine's other work, in a few seconds and with less noise. Made for alternated A/B pairs of a change
to the agent (run it from two checkouts, one after the other, several times); it keeps no result.

    .venv/bin/python benchmarks/agent_path.py                              # 500 x 100,000: ~5 s
    .venv/bin/python benchmarks/agent_path.py --agents 2500 --tasks 500000 # a schedule process at C1M

Prints one line per run: CPU per task (user and system), wall time, the agents' WAL bytes per task and
the process's peak RSS. Its temporary directory (the agents' DBs) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from benchlib import event_loop_runner
from schedule_agents import InlineTaskDB, settled
from treeherd.agent.worker import Worker
from treeherd.executors.hollow import HollowExecutor
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import Assignments, ManagerMessage, TaskStatusUpdate

SETTLE_TIMEOUT_S = 300.0  # for every task to be RUNNING and acknowledged


def assignment_messages(agents: int, tasks: int, batches: int) -> list[list[bytes]]:
    """Each agent's assignment messages, encoded: its share of the tasks, as one service's replicas."""
    now = dt.datetime.now(dt.UTC)
    spec = TaskSpec(command=["hollow"])
    messages: list[list[bytes]] = []
    slot = 0
    for index in range(agents):
        share = tasks // agents + (1 if index < tasks % agents else 0)
        machine = secrets.token_hex(8)
        mine = []
        for batch in range(batches):
            updated = []
            for _ in range(share // batches + (1 if batch < share % batches else 0)):
                slot += 1
                status = TaskStatus(state=TaskState.ASSIGNED, timestamp=now, message="assigned")
                updated.append(Task(id=secrets.token_hex(8), version=1000 + batch, created_at=now,
                                    updated_at=now, service_id="bench0000service", service_name="bench",
                                    node_path="/bench", slot=slot, machine_id=machine, status=status,
                                    spec=spec, cause="new slot"))  # fmt: skip
            mine.append(msgspec.msgpack.encode(Assignments(full=False, sequence=batch + 1, updated=updated)))
        messages.append(mine)
    return messages


def wal_bytes(root: Path) -> int:
    """The size of every agent's WAL under `root`."""
    return sum(path.stat().st_size for path in root.glob("*/*-wal"))


async def one_run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    messages = assignment_messages(args.agents, args.tasks, args.batches)
    decoder = msgspec.msgpack.Decoder(ManagerMessage)  # as the agent's channel decodes what comes
    workers: list[Worker] = []
    dbs: list[InlineTaskDB] = []
    for index in range(args.agents):
        db = InlineTaskDB(root / f"agent-{index}" / "agent.db")
        await db.open()
        dbs.append(db)
        worker = Worker(HollowExecutor(), db, hostname=f"agent-{index}")

        async def send(report_id: int, updates: list[TaskStatusUpdate], worker: Worker = worker) -> None:
            asyncio.get_running_loop().call_soon(worker.acknowledged, report_id)

        worker.set_sender(send)
        workers.append(worker)
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    for worker in workers:
        worker.session_started("session")
    await asyncio.sleep(0.2)  # every worker has loaded its (empty) DB
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for batch in range(args.batches):
        for index, worker in enumerate(workers):
            message = decoder.decode(messages[index][batch])
            assert isinstance(message, Assignments)
            worker.assignments(message)
            if index % 50 == 0:
                await asyncio.sleep(0)  # as messages come: the workers run between them
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not settled(worker.state for worker in workers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the tasks were not all RUNNING after {SETTLE_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)
    after, ended = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    held = sum(len(worker.state.task_ids()) for worker in workers)
    wal = wal_bytes(root)
    for worker in workers:
        worker.stop()
    await asyncio.wait(runs, timeout=30.0)
    for db in dbs:
        await db.close()
    return {
        "tasks": held,
        "cpu_us_per_task": 1e6 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / held,
        "user_us_per_task": 1e6 * (after.ru_utime - before.ru_utime) / held,
        "system_us_per_task": 1e6 * (after.ru_stime - before.ru_stime) / held,
        "wall_s": ended - started,
        "wal_bytes_per_task": wal / held,
        "max_rss_mib": after.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500, help="workers in this process (default 500)")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in all (default 100,000)")
    parser.add_argument("--batches", type=int, default=3, help="assignment messages per agent (default 3)")
    parser.add_argument("--runs", type=int, default=1, help="runs, one after the other (default 1)")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.tasks < args.agents or args.batches < 1 or args.runs < 1:
        parser.error("need at least one agent, one task per agent, one batch and one run")
    # As in the schedule benchmark's agents' processes: no cyclic collection walking every task's objects.
    gc.disable()
    for _ in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="treeherd-agent-path-"))
        try:
            runner, _ = event_loop_runner()
            with runner:
                result = runner.run(one_run(args, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(
            f"{result['tasks']:,.0f} tasks on {args.agents:,} agents: {result['cpu_us_per_task']:.1f} µs of CPU"
            f" per task (user {result['user_us_per_task']:.1f}, system {result['system_us_per_task']:.1f}),"
            f" {result['wall_s']:.2f} s, WAL {result['wal_bytes_per_task']:.0f} bytes per task,"
            f" RSS max {result['max_rss_mib']:.0f} MiB",
            flush=True,
        )
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
