#!/usr/bin/env python3
"""One process of the schedule benchmark's hollow agents: runs its share of real `treeherd.agent.Agent`s
(hollow executor) on an event loop of its own, and talks to the benchmark over its stdin and stdout.

Started by `schedule_fleet.Fleet`, never by hand. Protocol, one JSON object per line:

- stdin, first line: the settings (`Settings`); then commands: `settle` (the agents of every process
  started all the tasks: from now on check whether this process is settled), `report` (send what the
  agents saw) and `stop` (stop the agents, say how that went, exit). End of input (the benchmark is
  gone) stops it too.
- stdout: `ready` once every agent is started (the handshake), `progress` whenever the tasks started,
  the agents ended or (after `settle`) whether everything is settled changes (checked every 0.1 s),
  `report`, `stopped`.

"Settled": no status waits for the manager's acknowledgement and every task the agents hold is RUNNING.
The check reads every task the process holds, so it waits for `settle`: run whenever the tasks that
arrived had all started, it would cost the agents' loop more, the more tasks it holds (at 5,000 x
300,000, half of this process's samples in the seconds after every task had started).
The process starts in a session of its own (a Ctrl-C in the terminal reaches the benchmark only).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import psutil

import treeherd.agent.agent as agent_module
import treeherd.agent.db as agent_db
from benchlib import event_loop_runner
from schedule_agents import (
    CountingHandler,
    InlineTaskDB,
    RecordingExecutor,
    SharedThreadTaskDB,
    Tally,
    loop_lag,
    settled,
)
from treeherd.agent import Agent

PROGRESS_PERIOD_S = 0.1
STOP_AGENTS_S = 30.0  # for every agent to end after stop()


class Settings(msgspec.Struct, frozen=True):
    """What the benchmark tells a process of agents."""

    manager_url: str
    hostnames: list[str]
    agents_dir: str
    log_path: str
    db_threads: int = 0  # 0: one per agent, as treeherd does
    db_inline: bool = False  # on the event loop, no thread
    switch_interval: float | None = None


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(message) + b"\n")
    sys.stdout.buffer.flush()


def _read_commands(loop: asyncio.AbstractEventLoop, commands: asyncio.Queue[str]) -> None:
    """On a thread: hand each stdin line to the loop; end of input means stop."""
    for line in sys.stdin.buffer:
        loop.call_soon_threadsafe(commands.put_nowait, line.decode().strip())
    loop.call_soon_threadsafe(commands.put_nowait, "stop")


async def watch(
    agents: list[Agent], tasks: list[asyncio.Task[None]], tally: Tally, settle: asyncio.Event
) -> None:
    """Tell the benchmark when the tasks started, the agents that ended or (once `settle` is set)
    `settled` change."""
    last: dict[str, Any] = {}
    previous_started = -1
    while True:
        await asyncio.sleep(PROGRESS_PERIOD_S)
        ended = [t for t in tasks if t.done()]
        error = next((repr(t.exception()) for t in ended if not t.cancelled() and t.exception()), None)
        # The full check only once told to, every task that came here started, and that count stayed
        # the same for a period (it reads every task).
        quiet = settle.is_set() and tally.started == previous_started and 0 < len(tally.seen) <= tally.started
        previous_started = tally.started
        now = {"started": tally.started, "ended": len(ended), "error": error,
               "settled": quiet and settled(a.state for a in agents)}  # fmt: skip
        if now != last:
            _emit({"kind": "progress", **now})
            last = now


async def serve(settings: Settings, commands: asyncio.Queue[str], tally: Tally) -> dict[str, Any]:
    agents: list[Agent] = []
    tasks: list[asyncio.Task[None]] = []
    pool: ThreadPoolExecutor | None = None
    lag: list[tuple[float, float]] = []
    lag_stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, lag_stop))
    settle = asyncio.Event()
    try:
        if settings.db_inline:
            agent_module.TaskDB = InlineTaskDB  # type: ignore[misc]  # for the Agents made below
        elif settings.db_threads:
            SharedThreadTaskDB.pool = pool = ThreadPoolExecutor(settings.db_threads, "bench-agent-db")
            agent_module.TaskDB = SharedThreadTaskDB  # type: ignore[misc]  # for the Agents made below
        for hostname in settings.hostnames:
            executor = RecordingExecutor(tally)
            agent = Agent(settings.manager_url, Path(settings.agents_dir) / hostname, executor=executor,
                          hostname=hostname)  # fmt: skip
            agent.worker.set_sender(tally.counting(agent.session.send_report))
            agents.append(agent)
            tasks.append(asyncio.create_task(agent.run(), name=f"agent-{hostname}"))
        agent_module.TaskDB = agent_db.TaskDB  # type: ignore[misc]
        _emit({"kind": "ready", "pid": os.getpid(), "agents": len(agents)})
        watcher = asyncio.create_task(watch(agents, tasks, tally, settle))
        while (command := await commands.get()) != "stop":
            if command == "settle":
                settle.set()
            elif command == "report":
                _emit({"kind": "report", **collect(tally, agents, lag)})
        watcher.cancel()
    finally:
        for agent in agents:
            agent.stop()
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_AGENTS_S)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
        lag_stop.set()
        await asyncio.wait({lag_task}, timeout=1.0)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    failed = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is not None)
    return {"failed": failed, "cancelled": sum(1 for t in tasks if t.cancelled())}


def collect(tally: Tally, agents: list[Agent], lag: list[tuple[float, float]]) -> dict[str, Any]:
    """What the agents saw, for the benchmark's figures (perf_counter times are the machine's monotonic
    clock, the same in every process)."""
    return {
        "seen": [
            (
                i,
                s.created,
                s.state,
                s.version,
                s.status_at,
                s.received,
                None if math.isnan(s.started) else s.started,
            )
            for i, s in tally.seen.items()
        ],
        "started": tally.started,
        "reports": tally.reports,
        "updates": dict(tally.updates),
        "sessions": sum(a.session.sessions for a in agents),
        "loop_lag": lag,
        "threads": threading.active_count(),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
    }


def main() -> None:
    settings = msgspec.json.decode(sys.stdin.buffer.readline(), type=Settings)
    # No cyclic garbage collection: with tens of thousands of tasks' objects alive in one process,
    # each full collection walks all of them, a third of this process's CPU at 50,000 tasks. A real
    # agent holds a few tasks; this process lives minutes (its RSS is in the report).
    gc.disable()
    if settings.switch_interval is not None:
        sys.setswitchinterval(settings.switch_interval)
    # The agents' warnings (sessions lost, managers unreachable...) are counted and kept in a file.
    counting = CountingHandler(Path(settings.log_path))
    logger = logging.getLogger("treeherd")
    logger.addHandler(counting)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    tally = Tally()
    runner, _ = event_loop_runner()
    with runner:
        commands: asyncio.Queue[str] = asyncio.Queue()
        loop = runner.get_loop()
        threading.Thread(target=_read_commands, args=(loop, commands), daemon=True).start()
        stop = runner.run(serve(settings, commands, tally))
    _emit({"kind": "stopped", "agents_stop": stop, "log": dict(counting.counts), "at": time.time()})
    counting.close()
    # Not a normal exit: the thread reading stdin would hold the interpreter's shutdown on its lock.
    os._exit(0)


if __name__ == "__main__":
    main()
