"""The schedule benchmark's hollow agents' parts: a hollow executor that records when each task reached its
agent and started, a tally of what the agents reported, a task DB on shared threads, and the counting
of the agents' (and the manager's) log messages."""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import treeherd.agent.db as agent_db
from treeherd.agent.worker import SendReportFn
from treeherd.core.tasks.agent_state import AgentState
from treeherd.executors.hollow import HollowController, HollowExecutor
from treeherd.model.services import Task
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskStatusUpdate

T = TypeVar("T")


@dataclass(slots=True)
class Seen:
    """A task as its agent first received it (the manager's copy at assignment time)."""

    created: float  # task.created_at (the orchestrator's clock), epoch seconds
    state: int  # the state the copy carried: ASSIGNED normally
    version: int  # the store revision that wrote that copy: for an ASSIGNED copy, the placement's commit
    status_at: float  # its status timestamp: when the scheduler assigned it, for an ASSIGNED copy
    received: float  # when the agent's executor was asked for a controller (epoch seconds)
    started: float = math.nan  # when the hollow controller's start() returned: the agent's RUNNING


class Tally:
    """What every agent's executor saw, shared by all of them (one event loop: no locks needed)."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}
        self.started = 0
        self.reports = 0  # status reports the agents sent
        self.updates: collections.Counter[str] = collections.Counter()  # task statuses in them, by state

    def counting(self, send: SendReportFn) -> SendReportFn:
        """Wraps an agent's report sender (`Worker.set_sender`) to count what it sends."""

        async def send_report(report_id: int, updates: list[TaskStatusUpdate]) -> None:
            self.reports += 1
            for update in updates:
                self.updates[update.status.state.label] += 1
            await send(report_id, updates)

        return send_report


def settled(states: Iterable[AgentState]) -> bool:
    """No status of these agents waits for the manager's acknowledgement and every task they hold is
    RUNNING (a RUNNING event may still wait in a worker's queue: each task's own state must say so)."""
    states = list(states)
    if any(state.unacknowledged() for state in states):
        return False
    return all(
        (status := state.status(task_id)) is not None and status.state == TaskState.RUNNING
        for state in states
        for task_id in state.task_ids()
    )


class RecordingController(HollowController):
    __slots__ = ("_tally",)

    def __init__(self, task: Task, tally: Tally, **settings: Any) -> None:
        super().__init__(task, **settings)
        self._tally = tally

    def start_at_once(self) -> None:  # what the hollow controller's `start` does too
        super().start_at_once()
        seen = self._tally.seen.get(self.task.id)
        if seen is not None and math.isnan(seen.started):
            seen.started = time.time()
            self._tally.started += 1


class RecordingExecutor(HollowExecutor):
    """The hollow executor, noting when each task reached its agent and when it started."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self._tally = tally

    def controller(self, task: Task) -> HollowController:
        if task.id not in self._tally.seen:
            self._tally.seen[task.id] = Seen(
                created=task.created_at.timestamp(),
                state=int(task.status.state),
                version=task.version,
                status_at=task.status.timestamp.timestamp(),
                received=time.time(),
            )
        return super().controller(task)  # parses the task's settings, as the hollow executor does

    def make_controller(self, task: Task, **settings: Any) -> HollowController:
        return RecordingController(task, self._tally, **settings)


class SharedThreadTaskDB(agent_db.TaskDB):
    """The agent's local DB (same file, same schema, same writes), but on a thread pool shared by every
    agent of this process instead of one thread each (`--agent-db-threads K`).

    A real agent is a process of its own with one DB thread and a mostly idle event loop. A thousand
    agents in one process make a thousand threads wake up for the one GIL, which costs CPU and delays
    that real agents never see. Sharing a few threads is safe here: an agent's DB calls run one at a
    time (its worker awaits each), and the connection may move between threads (`check_same_thread`)."""

    pool: ThreadPoolExecutor | None = None  # set by the benchmark

    async def open(self) -> None:
        assert self.pool is not None
        self._thread = self.pool
        await self._call(self._open)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._call(self._close)
        self._thread = None  # the pool is the benchmark's to shut down

    def _connect(self) -> sqlite3.Connection:  # TaskDB's, with check_same_thread=False
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)


class InlineTaskDB(agent_db.TaskDB):
    """The agent's local DB (same file, same schema, same writes), with its SQLite calls made on the
    agents' event loop instead of a thread (`--agent-db-inline`): no hand-over to a thread and back per
    write, no threads taking turns at the GIL. Each write is a short WAL transaction without fsync
    (`synchronous=NORMAL`), which the loop can afford when nothing else waits on it."""

    async def open(self) -> None:
        self._open()

    async def close(self) -> None:
        self._close()

    async def _call(self, function: Callable[[], T]) -> T:
        return function()


async def loop_lag(samples: list[tuple[float, float]], stop: asyncio.Event, period: float = 0.1) -> None:
    """How late the agents' event loop wakes up from a `period` sleep (its queue length, in seconds), as
    (perf_counter, lag) pairs."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(period)
        samples.append((time.perf_counter(), loop.time() - started - period))


_VARIABLE = re.compile(r"bench-\d+|\b[0-9a-f]{16}\b|\d+(\.\d+)?")


def log_template(message: str) -> str:
    """A log message with its hostnames, ids and numbers blanked, to count messages by kind."""
    return _VARIABLE.sub("#", message)[:200]


class CountingHandler(logging.Handler):
    """Counts the agents' log records (WARNING and up) by kind, and keeps them in a file."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self._file = logging.FileHandler(path)
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {log_template(str(record.msg))}"] += 1
        self._file.emit(record)

    def close(self) -> None:
        self._file.close()
        super().close()


def summarize_manager_log(text: str, top: int = 12) -> dict[str, int]:
    """The manager's log lines counted by kind (after the timestamp, with variable parts blanked)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0][:2] == "20":
            counts[log_template(parts[2])] += 1
    return dict(counts.most_common(top))


def placement_batches(
    seen: dict[str, Seen], revisions: list[tuple[float, int, float]]
) -> list[dict[str, Any]]:
    """The scheduler's placement transactions, from the ASSIGNED copies the agents received: each one's
    revision, task count, the scheduler's timestamp (taken when its batch started), and when it was
    committed: after the last /healthz poll that showed an older revision, and by the earlier of the first
    poll that showed it and the first agent that received one of its tasks (both prove it committed)."""
    by_version: dict[int, list[Seen]] = collections.defaultdict(list)
    for s in seen.values():
        if s.state == TaskState.ASSIGNED:
            by_version[s.version].append(s)
    polled = [r[1] for r in revisions]
    batches = []
    for version in sorted(by_version):
        items = by_version[version]
        first_received = min(s.received for s in items)
        index = bisect.bisect_left(polled, version)  # the first poll at or past this revision
        by_poll = revisions[index][0] if index < len(revisions) else math.inf
        after = revisions[index - 1][0] if index > 0 else -math.inf
        batches.append(
            {
                "revision": version,
                "tasks": len(items),
                "assigned_at": min(s.status_at for s in items),
                "committed_after": max(after, min(s.status_at for s in items)),
                "committed_by": min(by_poll, first_received),
            }
        )
    return batches
