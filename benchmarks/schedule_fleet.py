"""The schedule benchmark's processes of hollow agents (`--agent-procs N`): starts them, deals the agents
out among them, follows their progress, collects what they saw, and stops them by pid whatever happens.

Each process is `schedule_hollow.py` (see there for the line protocol on its stdin and stdout). Every
wait is bounded: the ready handshake (`ready_timeout`), a report, a stop; a process that does not stop
in time gets SIGTERM, then SIGKILL. `leftovers()` counts the processes still alive after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil

from schedule_agents import Seen
from schedule_hollow import Settings

CHILD = Path(__file__).resolve().parent / "schedule_hollow.py"
LINE_LIMIT = 1 << 30  # a report of 100,000 tasks is one line of some MB
STOP_S = 45.0  # the agents' own stop is bounded by 35 s


class ChildFailed(Exception):
    """A process of agents ended, or said something unexpected, before it was asked to stop."""


class Child:
    """One process of agents, and what it said last."""

    def __init__(self, index: int, process: asyncio.subprocess.Process, hostnames: list[str]) -> None:
        self.index = index
        self.process = process
        self.pid = process.pid
        self.hostnames = hostnames
        self.ready = asyncio.get_running_loop().create_future()
        self.progress: dict[str, Any] = {"started": 0, "ended": 0, "error": None, "settled": False}
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None
        self.ps = psutil.Process(process.pid)

    async def read(self, on_progress: Callable[[], None]) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = msgspec.json.decode(line)
            kind = message.pop("kind", None)
            if kind == "ready":
                if not self.ready.done():
                    self.ready.set_result(message)
            elif kind == "progress":
                self.progress = message
                on_progress()
            else:
                await self.replies.put({"kind": kind, **message})
        if not self.ready.done():
            self.ready.set_exception(ChildFailed(f"agents process {self.index} ended before it was ready"))
        await self.replies.put({"kind": "eof"})

    async def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def ask(self, command: str, kind: str, within_s: float) -> dict[str, Any]:
        await self.tell(command)
        async with asyncio.timeout(within_s):
            reply = await self.replies.get()
        if reply["kind"] != kind:
            raise ChildFailed(f"agents process {self.index}: expected {kind!r}, got {reply['kind']!r}")
        return reply


class Fleet:
    """`start()`, then `started`/`settled()`/`collect()`, then `stop()`; `kill()` in any case."""

    def __init__(self, procs: int, work: Path) -> None:
        self.procs = procs
        self.work = work
        self.children: list[Child] = []
        self.changed = asyncio.Event()  # set whenever a process reports progress

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def processes(self) -> list[psutil.Process]:
        return [c.ps for c in self.children]

    async def start(
        self, manager_url: str, hostnames: list[str], agents_dir: Path, *, db_threads: int, db_inline: bool,
        switch_interval: float | None, ready_timeout: float,
    ) -> None:  # fmt: skip
        """Start the processes (agents dealt out in turn) and wait for each one's handshake."""
        for index in range(self.procs):
            share = hostnames[index :: self.procs]
            if not share:
                break
            with (self.work / f"agents-{index}.stderr").open("wb") as stderr:  # the child keeps its copy
                process = await asyncio.create_subprocess_exec(
                    sys.executable, str(CHILD), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=stderr, start_new_session=True, limit=LINE_LIMIT,
                )  # fmt: skip
            child = Child(index, process, share)
            self.children.append(child)
            settings = Settings(manager_url, share, str(agents_dir), str(self.work / f"agents-{index}.log"),
                                db_threads, db_inline, switch_interval)  # fmt: skip
            assert process.stdin is not None
            process.stdin.write(msgspec.json.encode(settings) + b"\n")
            child.reader = asyncio.create_task(child.read(self.changed.set))
        async with asyncio.timeout(ready_timeout):
            await asyncio.gather(*(c.ready for c in self.children))

    @property
    def started(self) -> int:
        return sum(c.progress["started"] for c in self.children)

    def failure(self) -> str | None:
        """Why agents ended early, if any did (or a process did)."""
        for child in self.children:
            if child.process.returncode is not None:
                return f"agents process {child.index} exited with {child.process.returncode}"
            if child.progress["ended"]:
                return f"{child.progress['ended']} agents ended early: {child.progress['error']}"
        return None

    async def settled(self, target: int) -> float:
        """Wait until the agents started `target` tasks and every process is settled (the manager has
        acknowledged every status, all RUNNING); returns the perf_counter time it was seen. The processes
        are told to check whether they are settled only once `target` tasks started (the check reads
        every task they hold)."""
        while self.started < target:
            self.changed.clear()
            await self.changed.wait()
        await asyncio.gather(*(c.tell("settle") for c in self.children))
        while not all(c.progress["settled"] for c in self.children):
            self.changed.clear()
            await self.changed.wait()
        return time.perf_counter()

    async def collect(self, within_s: float = 120.0) -> dict[str, Any]:
        """What every process's agents saw, merged."""
        replies = await asyncio.gather(*(c.ask("report", "report", within_s) for c in self.children))
        seen: dict[str, Seen] = {}
        updates: dict[str, int] = {}
        lag: list[tuple[float, float]] = []
        for reply in replies:
            for i, created, state, version, status_at, received, started in reply["seen"]:
                seen[i] = Seen(
                    created, state, version, status_at, received, math.nan if started is None else started
                )
            for state, count in reply["updates"].items():
                updates[state] = updates.get(state, 0) + count
            lag += [(t, v) for t, v in reply["loop_lag"]]
        return {
            "seen": seen,
            "started": sum(r["started"] for r in replies),
            "reports": sum(r["reports"] for r in replies),
            "updates": updates,
            "sessions": sum(r["sessions"] for r in replies),
            "loop_lag": sorted(lag),
            "threads": [r["threads"] for r in replies],
            "rss_mb": [r["rss_mb"] for r in replies],
        }

    async def stop(self) -> dict[str, Any]:
        """Ask every process to stop its agents and exit (bounded), then `kill()` what is left."""
        results: dict[str, Any] = {"failed": 0, "cancelled": 0, "log": {}}

        async def stop_one(child: Child) -> None:
            with contextlib.suppress(Exception):
                reply = await child.ask("stop", "stopped", STOP_S)
                for key in ("failed", "cancelled"):
                    results[key] += reply["agents_stop"][key]
                for kind, count in reply["log"].items():
                    results["log"][kind] = results["log"].get(kind, 0) + count
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await child.process.wait()

        await asyncio.gather(*(stop_one(c) for c in self.children if c.process.returncode is None))
        self.kill()
        for child in self.children:
            if child.reader is not None:
                child.reader.cancel()
        results["exit_codes"] = [c.process.returncode for c in self.children]
        return results

    def kill(self) -> None:
        """SIGTERM, then SIGKILL, each process still alive (by pid); waits for them (bounded)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [c.ps for c in self.children if _alive(c.ps)]
            for proc in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
            _, still = psutil.wait_procs(alive, timeout=5.0)
            if not still:
                return

    def leftovers(self) -> int:
        """How many of the processes are still alive."""
        return sum(1 for c in self.children if _alive(c.ps))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
