#!/usr/bin/env python3
"""Schedule one big service on many hollow agents over the real transport, and measure it.

Starts `python -m treeherd manager` (via `treeherd.testing.processes.ManagerProcess`) on a free fixed port of
127.0.0.1, in a temporary directory, on the embedded SQLite store, and creates the tree node `bench`. Then, in
this process, runs `--nodes` real `treeherd.agent.Agent`s with a hollow executor, all in one asyncio loop
(uvloop when available): each dials the manager's WebSocket agent channel, registers as `bench-NNNN` with the
CPUs and memory psutil sees, and keeps its own local SQLite DB. Once every node is ready it creates one
replicated service of `--tasks` replicas (`hollow`, no reservations) and measures, until every task is
RUNNING:

- the time from the create request until `GET /api/v1/services/bench` says running == desired == M;
- placements/s: M / (time from the create request until the last task was ASSIGNED);
- each task's create -> RUNNING latency;
- the manager's CPU time (main thread and others) and RSS, this process's CPU (the agents), the machine's CPU.

Results go to `OUT/schedule-NxM.json` and `OUT/schedule-NxM.png`; `--profile` also records the manager (and
with `--profile-agents` this process) with py-spy while the service is scheduled, and summarises the profile
in the JSON. Every wait is bounded; the agents and the manager (by pid) are stopped whatever happens.

    .venv/bin/python benchmarks/schedule.py --nodes 100 --tasks 10000
    .venv/bin/python benchmarks/schedule.py --nodes 1000 --tasks 100000 --timeout 600
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import datetime as dt
import http.client
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import treeherd.agent.agent as agent_module
import treeherd.agent.db as agent_db
from benchlib import machine_info
from treeherd.agent import Agent
from treeherd.agent.worker import SendReportFn
from treeherd.executors.hollow import HollowController, HollowExecutor
from treeherd.model.services import Task
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskStatusUpdate
from treeherd.testing import processes
from treeherd.testing.processes import ManagerProcess

NODE = "bench"
SERVICE = "bench"
HTTP_TIMEOUT = 120.0  # seconds for one API request (the final read of every task is the longest)
STOP_AGENTS_S = 30.0  # for every agent to end after stop()
PY_SPY_STOP_S = 60.0  # for py-spy to write its profile after SIGINT
MIB = 1024 * 1024
GOAL_PLACEMENTS_PER_S = 10_000  # the team's goal: placements/s ...
GOAL_ALL_RUNNING_S = 30.0  # ... and 100,000 tasks on 1,000 nodes all RUNNING within this, on 2 cores


# ---- a blocking JSON client (used from threads: never on the agents' event loop) ---------------------------
class ApiError(Exception):
    """The manager answered with something other than 2xx."""


class Api:
    """One keep-alive HTTP/1.1 connection to the manager; `call` reconnects after a failure.

    uvicorn closes a keep-alive connection idle for 5 s: one idle for longer than IDLE_S is closed
    first, and a GET that finds the connection closed anyway is sent once more on a new one."""

    IDLE_S = 2.0

    def __init__(self, host: str, port: int, *, timeout: float = HTTP_TIMEOUT) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self._last_used = 0.0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if time.monotonic() - self._last_used > self.IDLE_S:
            self._conn.close()
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                if method != "GET" or attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                self._conn.close()  # the next call reconnects
                raise
        self._last_used = time.monotonic()
        if not 200 <= response.status < 300:
            raise ApiError(f"{method} {path}: HTTP {response.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        self._conn.close()


# ---- what the agents see ----------------------------------------------------------------------------------
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


class RecordingController(HollowController):
    def __init__(self, task: Task, tally: Tally, **settings: Any) -> None:
        super().__init__(task, **settings)
        self._tally = tally

    async def start(self) -> None:
        await super().start()
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
        plain = super().controller(task)  # parses the task's settings, as the hollow executor does
        controller = RecordingController(
            task,
            self._tally,
            exit_after_s=plain.exit_after_s,
            exit_code=plain.exit_code,
            fail_in=plain.fail_in,
            shutdown_exit_code=plain.shutdown_exit_code,
        )
        self.controllers[task.id] = controller
        return controller


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

    def _open(self) -> None:  # TaskDB._open, with check_same_thread=False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(agent_db._SCHEMA)
        self._db = db


async def watch_acknowledged(
    agents: Sequence[Agent], tally: Tally, target: int, period: float = 0.05
) -> float:
    """Wait until every agent has started its tasks and the manager has acknowledged every status report
    (a StatusAck is sent once the statuses are committed): then the store holds RUNNING for all of them.
    Returns the perf_counter time it was seen (late by the agents' loop lag at most)."""
    while True:
        await asyncio.sleep(period)
        if tally.started < target or any(a.state.unacknowledged() for a in agents):
            continue
        # A RUNNING event may still wait in a worker's queue: every task's state must say RUNNING.
        if all(
            (status := a.state.status(task_id)) is not None and status.state == TaskState.RUNNING
            for a in agents
            for task_id in a.state.task_ids()
        ):
            return time.perf_counter()


# ---- logs -------------------------------------------------------------------------------------------------
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


# ---- CPU and memory ---------------------------------------------------------------------------------------
def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int, tid: int) -> float:
    """CPU seconds of one thread, from /proc (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": fields 3.., utime and stime are 14, 15
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_split(
    proc: psutil.Process, exclude: frozenset[int] | set[int] = frozenset()
) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of a process, threads that ended included; the
    threads in `exclude` are left out. Reads three /proc files, not one per thread: with a thousand
    agent DB threads, listing them all takes the GIL for tens of milliseconds."""
    total = cpu_seconds(proc)
    main = thread_cpu(proc.pid, proc.pid)
    excluded = sum(thread_cpu(proc.pid, tid) for tid in exclude)
    return main, max(0.0, total - main - excluded)


@dataclass
class Usage:
    """Cumulative counters at one instant; subtract two for a phase."""

    wall: float = 0.0
    manager_cpu: float = 0.0
    manager_main: float = 0.0
    manager_others: float = 0.0
    agents_cpu: float = 0.0
    agents_main: float = 0.0
    agents_others: float = 0.0
    machine_busy: float = 0.0
    machine_total: float = 0.0

    @classmethod
    def now(cls, manager: psutil.Process, exclude_threads: set[int]) -> Usage:
        me = psutil.Process()
        manager_main, manager_others = thread_split(manager)
        agents_main, agents_others = thread_split(me, exclude_threads)
        machine = psutil.cpu_times()
        total = sum(machine)
        return cls(
            wall=time.perf_counter(),
            manager_cpu=cpu_seconds(manager),
            manager_main=manager_main,
            manager_others=manager_others,
            agents_cpu=agents_main + agents_others,
            agents_main=agents_main,
            agents_others=agents_others,
            machine_busy=total - machine.idle - getattr(machine, "iowait", 0.0),
            machine_total=total,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__})

    def summary(self) -> dict[str, float]:
        wall = self.wall or math.nan
        cores = os.cpu_count() or 1
        machine = self.machine_busy / self.machine_total * cores if self.machine_total else math.nan
        return {
            "seconds": round(self.wall, 3),
            "manager_cpu_s": round(self.manager_cpu, 2),
            "manager_main_thread_cpu_s": round(self.manager_main, 2),
            "manager_other_threads_cpu_s": round(self.manager_others, 2),
            "manager_cores": round(self.manager_cpu / wall, 3),
            "agents_cpu_s": round(self.agents_cpu, 2),
            "agents_main_thread_cpu_s": round(self.agents_main, 2),
            "agents_db_threads_cpu_s": round(self.agents_others, 2),
            "agents_cores": round(self.agents_cpu / wall, 3),
            "machine_busy_cores": round(machine, 3),
            "machine_busy_fraction": round(machine / cores, 3),
            "other_processes_cores": round(machine - (self.manager_cpu + self.agents_cpu) / wall, 3),
        }


class Sampler(threading.Thread):
    """CPU and memory every `interval` seconds: the manager, this process (the agents) and the machine.

    A thread of its own that makes no requests, so neither a busy manager nor the agents' loop delays it
    (the GIL can, by up to its switch interval, 5 ms). Each counter's rate uses the times it was read at."""

    def __init__(self, manager: psutil.Process, *, interval: float, exclude: set[int]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self._manager = manager
        self._interval = interval
        self._exclude = exclude
        self.stopping = threading.Event()
        self.samples: list[dict[str, float]] = []
        self.rss_max = 0
        self.started_at = time.perf_counter()

    def _read(self, me: psutil.Process) -> tuple[tuple[float, float], ...] | None:
        try:
            manager = (time.perf_counter(), cpu_seconds(self._manager))
            rss = self._manager.memory_info().rss
        except psutil.Error:
            return None
        self.rss_max = max(self.rss_max, rss)
        agents_at = time.perf_counter()
        agents = cpu_seconds(me)  # the sampler and the poller included (a few ms per second)
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return manager, (agents_at, agents), (busy, sum(machine)), (time.perf_counter(), float(rss))

    def run(self) -> None:
        me = psutil.Process()
        cores = os.cpu_count() or 1
        previous = self._read(me)
        while previous is not None and not self.stopping.wait(self._interval):
            current = self._read(me)
            if current is None:
                break
            (m0, mc0), (a0, ac0), (b0, t0), _ = previous
            (m1, mc1), (a1, ac1), (b1, t1), (now, rss) = current
            self.samples.append(
                {
                    "t": round(now - self.started_at, 3),
                    "manager_cores": round((mc1 - mc0) / max(m1 - m0, 1e-6), 3),
                    "agents_cores": round((ac1 - ac0) / max(a1 - a0, 1e-6), 3),
                    "machine_cores": round((b1 - b0) / (t1 - t0) * cores, 3) if t1 > t0 else 0.0,
                    "manager_rss_mb": round(rss / MIB, 1),
                }
            )
            previous = current


class Poller(threading.Thread):
    """Polls the manager every `interval`: `/healthz` (the store's revision) always, and once the service
    exists its summary (running/desired), until running == desired == M; then calls `all_running`.

    A thread with its own connection, so a busy agents' loop does not delay the polls (a busy manager
    does: each poll records how long it took)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        target: int,
        interval: float,
        summary_interval: float,
        all_running: Callable[[float], None],
    ) -> None:
        super().__init__(name="bench-poller", daemon=True)
        self._api = Api(host, port, timeout=30.0)
        self._target = target
        self._interval = interval
        self._summary_interval = summary_interval
        self._last_summary = -math.inf
        self.hurry = threading.Event()  # poll the summary at every tick from now on
        self._all_running = all_running
        self.stopping = threading.Event()
        self.wake = threading.Event()  # poll now
        self.polling = threading.Event()  # set once the service is created
        self.created_at: float | None = None  # perf_counter of the create request
        self.polls: list[
            tuple[float, int, int, float]
        ] = []  # (t since create, running, desired, poll seconds)
        self.revisions: list[tuple[float, int, float]] = []  # (epoch seconds, store revision, poll seconds)
        self.errors: list[str] = []
        self.first_all_running: float | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            tick = time.perf_counter()
            self._revision()
            due = self.hurry.is_set() or tick - self._last_summary >= self._summary_interval
            if self.polling.is_set() and self.first_all_running is None and due:
                self._last_summary = tick
                self._poll()
            self.wake.wait(max(0.0, self._interval - (time.perf_counter() - tick)))
            self.wake.clear()
        self._api.close()

    def _revision(self) -> None:
        started = time.time()
        try:
            health = self._api.call("GET", "/healthz")
        except (OSError, http.client.HTTPException, ApiError, ValueError) as error:
            self.errors.append(repr(error)[:300])
            return
        done = time.time()
        self.revisions.append(((started + done) / 2, int(health["revision"]), round(done - started, 4)))

    def _poll(self) -> None:
        assert self.created_at is not None
        started = time.perf_counter()
        try:
            summary = self._api.call("GET", f"/api/v1/services/{SERVICE}")
        except (OSError, http.client.HTTPException, ApiError, ValueError) as error:
            self.errors.append(repr(error)[:300])
            return
        done = time.perf_counter()
        running, desired = int(summary["running"]), int(summary["desired"])
        # The summary was computed somewhere between the request and the response: take the midpoint.
        at = (started + done) / 2 - self.created_at
        self.polls.append((round(at, 3), running, desired, round(done - started, 4)))
        if running >= self._target and desired == self._target and self.first_all_running is None:
            self.first_all_running = at
            self._all_running(at)


async def loop_lag(samples: list[tuple[float, float]], stop: asyncio.Event, period: float = 0.1) -> None:
    """How late the agents' event loop wakes up from a `period` sleep (its queue length, in seconds), as
    (perf_counter, lag) pairs."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(period)
        samples.append((time.perf_counter(), loop.time() - started - period))


# ---- py-spy -------------------------------------------------------------------------------------------------
class PySpy:
    """`py-spy record --format raw` on one pid until `stop()` (SIGINT: py-spy then writes its file)."""

    def __init__(self, pid: int, path: Path, *, rate: int, log: Path, rules: list[tuple[str, str]]) -> None:
        self.rules = rules
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.path = path
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--nonblocking", "--output", str(path)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        try:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGINT)
                try:
                    self._process.wait(PY_SPY_STOP_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(10)
        finally:
            self._log.close()


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Components of a stack: the first rule (in this order) that any of its frames matches, "thread:" rules
# matching the thread's name. The outermost frames of a coroutine's stack name its asyncio task (the
# component); the order puts the specific ones first (a scheduler stack also holds `Reactor.run`).
MANAGER_COMPONENTS: list[tuple[str, str]] = [
    ("SQLite thread: SqliteLog._write (encode rows, INSERT, COMMIT, fsync)", "thread:sqlite"),
    ("store writer: State.apply (checks, indexes) x2 + rollback", "State.apply"),
    ("store writer: State.apply (checks, indexes) x2 + rollback", "State.rollback"),
    ("store writer: publish to watches, history", "EngineStore._publish"),
    ("store writer: publish to watches, history", "EngineStore._remember"),
    ("store writer: other (batching, handing to the SQLite thread)", "EngineStore._drain"),
    ("API: service summary / task rows (the benchmark's polls)", "Services."),
    ("dispatcher: status reports in (WebSocket, decode, check, queue)", "Dispatcher._read"),
    ("dispatcher: status flush (plan the batch)", "Dispatcher._status_loop"),
    ("dispatcher: route store events to sessions", "Dispatcher._route_loop"),
    ("dispatcher: assignment increments (fold events)", "Dispatcher._assign"),
    ("dispatcher: send to agents (msgpack encode, WebSocket)", "Dispatcher._write"),
    ("dispatcher: other (sessions, heartbeats)", "Dispatcher"),
    ("scheduler", "Scheduler."),
    ("allocator", "Allocator."),
    ("orchestrator", "Orchestrator."),
    ("reactors: watches and debounce", "Reactor."),
    ("HTTP stack (uvicorn, litestar)", "uvicorn"),
    ("HTTP stack (uvicorn, litestar)", "litestar"),
    ("WebSocket protocol", "websockets"),
]
AGENT_COMPONENTS: list[tuple[str, str]] = [
    ("agent DB threads: TaskDB._write (SQLite, waiting for the GIL)", "thread:treeherd-agent-db"),
    ("agent DB threads: TaskDB._write (SQLite, waiting for the GIL)", "thread:bench-agent-db"),
    ("benchmark threads (poller, sampler)", "thread:bench-"),
    ("worker: state machine (AgentState.handle)", "AgentState.handle"),
    ("worker: execute (encode rows, submit DB write, start runners)", "Worker._execute"),
    ("worker: loop (queue, batches)", "Worker.run"),
    ("task runners (asyncio tasks per step)", "TaskRunner"),
    ("session: send reports (msgpack encode, WebSocket)", "Worker._reporter"),
    ("session: receive (WebSocket, msgpack decode)", "Session._receive"),
    ("session: other (heartbeats, dialing)", "Session."),
    ("agents: start and stop", "Agent.run"),
    ("WebSocket protocol", "websockets"),
    ("benchmark (loop lag, acknowledgement watch)", "loop_lag"),
    ("benchmark (loop lag, acknowledgement watch)", "watch_acknowledged"),
]


def summarize_profile(path: Path, rules: list[tuple[str, str]], top: int = 25) -> dict[str, Any]:
    """Breakdown of a py-spy raw (collapsed) profile: per thread, per component, top functions.

    Collapsed lines are `thread (tid): name;frame;...;leaf count`, outermost first. py-spy leaves idle
    threads out, so the percentages are of the samples of busy threads (a thread waiting for the GIL
    counts as busy)."""
    threads: collections.Counter[str] = collections.Counter()
    components: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return {"error": f"{path} was not written"}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, *frames = stack.split(";")
        thread = head.partition(": ")[2] or head
        total += count
        threads[re.sub(r"_\d+$", "", thread)] += count
        functions = []
        for frame in frames:
            match = _FRAME.match(frame)
            functions.append(f"{match['func']} ({Path(match['file']).name})" if match else frame)
        for function in set(functions):
            inclusive[function] += count
        if functions:
            self_time[functions[-1]] += count
        component = "event loop and other"
        for label, key in rules:
            if key.startswith("thread:"):
                if thread.startswith(key[7:]):
                    component = label
                    break
            elif any(key in frame for frame in frames):
                component = label
                break
        components[component] += count

    def pct(counter: collections.Counter[str], n: int | None = None) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(n)} if total else {}

    return {
        "samples": total,
        "threads_pct": pct(threads),
        "components_pct": pct(components),
        "top_inclusive_pct": pct(inclusive, top),
        "top_self_pct": pct(self_time, top),
    }


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


# ---- helpers ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def distribution(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "min": round(ordered[0], 4),
        "p50": round(percentile(ordered, 50), 4),
        "p90": round(percentile(ordered, 90), 4),
        "p99": round(percentile(ordered, 99), 4),
        "max": round(ordered[-1], 4),
        "mean": round(sum(ordered) / len(ordered), 4),
    }


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 2.0) -> dict[str, Any]:
    """Wait (at most `max_wait` s) for a `window` in which the machine's other processes use less than
    `threshold` cores: this VM is shared, and a concurrent test run skews every figure."""
    started = time.monotonic()
    windows: list[float] = []
    while True:
        before = psutil.cpu_times()
        time.sleep(window)
        after = psutil.cpu_times()
        total = sum(after) - sum(before)
        busy = (
            total - (after.idle - before.idle) - (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
        )
        cores = busy / total * (os.cpu_count() or 1) if total else 0.0
        windows.append(round(cores, 2))
        waited = time.monotonic() - started
        if cores < threshold or waited >= max_wait:
            return {
                "quiet": cores < threshold,
                "waited_s": round(waited, 1),
                "busy_cores_last_windows": windows[-5:],
            }


def mount_of(path: Path) -> str:
    """The filesystem type `path` lives on (tmpfs, ext4, ...)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# ---- the benchmark ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the benchmark started, so that `finally` can stop it."""

    agents: list[Agent] = field(default_factory=list)
    agent_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    spies: list[PySpy] = field(default_factory=list)
    threads: list[Poller | Sampler] = field(default_factory=list)
    db_pool: ThreadPoolExecutor | None = None


async def wait_ready(api: Api, hostnames: set[str], deadline: float) -> dict[str, Any]:
    """Poll the machines list until every agent's node is ready; returns how it went."""
    polls = 0
    ready = 0
    while True:
        machines = await asyncio.to_thread(api.call, "GET", "/api/v1/machines?agents=true")
        polls += 1
        ready = sum(
            1
            for m in machines
            if m["hostname"] in hostnames and (m.get("agent") or {}).get("state") == "ready"
        )
        if ready == len(hostnames):
            return {"ready": ready, "polls": polls}
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {len(hostnames)} nodes were ready in time")
        await asyncio.sleep(0.5)


async def stop_agents(run: Run) -> dict[str, int]:
    for agent in run.agents:
        agent.stop()
    pending = [t for t in run.agent_tasks if not t.done()]
    if pending:
        _, pending_set = await asyncio.wait(pending, timeout=STOP_AGENTS_S)
        for task in pending_set:
            task.cancel()
        if pending_set:
            await asyncio.wait(pending_set, timeout=5.0)
    failed = sum(1 for t in run.agent_tasks if t.done() and not t.cancelled() and t.exception() is not None)
    return {"failed": failed, "cancelled": sum(1 for t in run.agent_tasks if t.cancelled())}


async def benchmark(
    args: argparse.Namespace, work: Path, agents_dir: Path, report: dict[str, Any], run: Run
) -> None:
    n, m = args.nodes, args.tasks
    data_dir = work / "manager"
    report["parameters"]["agent_data_filesystem"] = mount_of(agents_dir)
    phases: dict[str, Any] = report["phases"]

    port = free_port()
    started = time.perf_counter()
    manager = ManagerProcess(data_dir, listen=f"127.0.0.1:{port}")
    report["_manager"] = manager
    await asyncio.to_thread(manager.start)
    phases["manager_start"] = {"seconds": round(time.perf_counter() - started, 3)}
    proc = psutil.Process(manager.pid)
    api = Api("127.0.0.1", port)
    report["manager"] = {"url": manager.url, "pid": manager.pid, "log": str(manager.log_path)}
    await asyncio.to_thread(api.call, "POST", "/api/v1/nodes", {"path": NODE})
    if args.heartbeat_period is not None:  # before the agents connect: their sessions start with it
        await asyncio.to_thread(
            api.call, "PATCH", "/api/v1/cluster", {"heartbeat_period_s": args.heartbeat_period}
        )
    report["cluster_settings"] = await asyncio.to_thread(api.call, "GET", "/api/v1/cluster")

    # the monitor: CPU/RSS samples all along, summary polls once the service exists
    loop = asyncio.get_running_loop()
    all_running = loop.create_future()

    def signal_all_running(at: float) -> None:
        loop.call_soon_threadsafe(lambda: all_running.done() or all_running.set_result(at))

    poller = Poller(
        "127.0.0.1", port, target=m, interval=args.poll_interval, summary_interval=args.summary_interval,
        all_running=signal_all_running,
    )  # fmt: skip
    poller.start()
    exclude = {poller.native_id} if poller.native_id else set()
    sampler = Sampler(proc, interval=args.sample_interval, exclude=exclude)
    sampler.start()
    run.threads += [poller, sampler]
    if sampler.native_id:
        exclude.add(sampler.native_id)
    lag_samples: list[tuple[float, float]] = []
    lag_stop = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag_samples, lag_stop))

    # 1. agents
    tally = Tally()
    seen = tally.seen
    hostnames = [f"bench-{i:04d}" for i in range(n)]
    before = Usage.now(proc, exclude)
    if args.agent_db_threads:
        SharedThreadTaskDB.pool = run.db_pool = ThreadPoolExecutor(args.agent_db_threads, "bench-agent-db")
        agent_module.TaskDB = SharedThreadTaskDB  # type: ignore[misc]  # for the Agents made below
    for i, hostname in enumerate(hostnames):
        agent = Agent(
            manager.url, agents_dir / hostname, executor=RecordingExecutor(tally), hostname=hostname
        )
        agent.worker.set_sender(tally.counting(agent.session.send_report))
        run.agents.append(agent)
        run.agent_tasks.append(asyncio.create_task(agent.run(), name=f"agent-{i}"))
    agent_module.TaskDB = agent_db.TaskDB  # type: ignore[misc]
    ready = await wait_ready(api, set(hostnames), time.monotonic() + args.ready_timeout)
    usage = Usage.now(proc, exclude) - before
    phases["agents_ready"] = {
        **usage.summary(),
        **ready,
        "threads_in_agents_process": threading.active_count(),
    }
    print(f"{n} agents ready in {usage.wall:.2f} s ({threading.active_count()} threads)", flush=True)
    dead = [t for t in run.agent_tasks if t.done()]
    if dead:
        raise RuntimeError(f"{len(dead)} agents ended early: {dead[0].exception()!r}")

    # 2. idle: what N connected agents cost the manager with nothing to do
    before = Usage.now(proc, exclude)
    await asyncio.sleep(args.settle)
    phases["idle"] = (Usage.now(proc, exclude) - before).summary()

    # 3. the service
    spies: list[PySpy] = []
    if args.profile:
        stem = report["_stem"]
        spies.append(PySpy(manager.pid, args.out / f"{stem}-manager.collapsed", rate=args.profile_rate,
                           log=work / "py-spy-manager.log", rules=MANAGER_COMPONENTS))  # fmt: skip
        if args.profile_agents:
            spies.append(PySpy(os.getpid(), args.out / f"{stem}-agents.collapsed", rate=args.profile_rate,
                               log=work / "py-spy-agents.log", rules=AGENT_COMPONENTS))  # fmt: skip
        run.spies = spies
        await asyncio.sleep(1.0)  # let py-spy attach
    body = {"name": SERVICE, "node": NODE, "replicas": m, "task": {"command": ["hollow"]}}
    lag_before = len(lag_samples)
    before = Usage.now(proc, exclude)
    poller.created_at = created = time.perf_counter()
    created_wall = time.time()
    await asyncio.to_thread(api.call, "POST", "/api/v1/services", body)
    report["create_request_seconds"] = round(time.perf_counter() - created, 3)
    poller.polling.set()
    acknowledged = asyncio.create_task(watch_acknowledged(run.agents, tally, m))

    def confirm(_: object) -> None:  # poll the summary at once, then at every tick, until it says M
        poller.hurry.set()
        poller.wake.set()

    acknowledged.add_done_callback(confirm)
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(all_running), args.timeout)
    except TimeoutError:
        timed_out = True
    usage = Usage.now(proc, exclude) - before
    if not timed_out:  # the acknowledgements normally arrive before the poll that sees them committed
        await asyncio.wait({acknowledged}, timeout=5.0)
    if acknowledged.done() and not acknowledged.cancelled():
        report["seconds_to_all_running_acknowledged"] = round(acknowledged.result() - created, 3)
    else:
        acknowledged.cancel()
        report["seconds_to_all_running_acknowledged"] = None
    schedule_s = usage.wall
    for spy in spies:
        await asyncio.to_thread(spy.stop)
    schedule_lag = sorted(lag for _, lag in lag_samples[lag_before:])
    phases["schedule"] = {
        **usage.summary(),
        "agents_loop_lag_s": {"p50": round(percentile(schedule_lag, 50), 4),
                              "p99": round(percentile(schedule_lag, 99), 4),
                              "max": round(schedule_lag[-1], 4) if schedule_lag else math.nan},
    }  # fmt: skip
    report["status"] = "timeout" if timed_out else "ok"
    report["seconds_to_all_running"] = None if timed_out else round(poller.first_all_running or 0, 3)
    report["manager_cpu_s"] = phases["schedule"]["manager_cpu_s"]
    report["agents_cpu_s"] = phases["schedule"]["agents_cpu_s"]
    label = "timed out" if timed_out else f"all running after {poller.first_all_running:.2f} s"
    print(f"service of {m} tasks: {label}", flush=True)

    # 4. read every task once: the RUNNING timestamps (and a few full tasks, to check created_at)
    started = time.perf_counter()
    rows: list[dict[str, Any]] | None = None
    full: list[dict[str, Any]] = []
    try:
        rows = await asyncio.to_thread(api.call, "GET", f"/api/v1/services/{SERVICE}/tasks?all=false")
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "rows": len(rows or [])}
        for row in (rows or [])[:: max(1, len(rows or []) // 20)]:
            full.append(await asyncio.to_thread(api.call, "GET", f"/api/v1/tasks/{row['id']}"))
    except (OSError, http.client.HTTPException, ApiError, ValueError) as failure:
        # A manager in trouble may not answer in time: the agents' own records still tell a lot.
        phases["read_tasks"] = {"seconds": round(time.perf_counter() - started, 3), "error": repr(failure)}
    lag_stop.set()
    await asyncio.wait({lag_task}, timeout=1.0)

    # 5. figures
    if rows is not None:
        states = collections.Counter(row["state"] for row in rows)
        running_rows = [row for row in rows if row["state"] == "running"]
        report["tasks_running"] = len(running_rows)
        report["task_states"] = dict(states)
        running_at = {row["id"]: parse_time(row["since"]) for row in running_rows}
        report["running_timestamps_from"] = "the manager's task rows (since = the agent's RUNNING time)"
    else:  # the last summary poll, and the agents' own start times
        report["tasks_running"] = poller.polls[-1][1] if poller.polls else 0
        running_at = {i: s.started for i, s in seen.items() if not math.isnan(s.started)}
        report["running_timestamps_from"] = "the agents' records (not confirmed by the manager)"
    report["tasks_reached_agents"] = len(seen)
    report["tasks_started_by_agents"] = tally.started
    mismatched = sum(
        1
        for task in full
        if task["id"] in seen and abs(parse_time(task["created_at"]) - seen[task["id"]].created) > 1e-3
    )
    report["created_at_checked"] = {"tasks": len(full), "mismatched": mismatched}

    created_at = [s.created for s in seen.values()]
    report["tasks_seen_assigned"] = sum(1 for s in seen.values() if s.state == TaskState.ASSIGNED)
    first_created = min(created_at) if created_at else math.nan
    timing: dict[str, Any] = {
        "request_to_first_task_created_s": round(first_created - created_wall, 3),
        "request_to_last_task_created_s": round(max(created_at) - created_wall, 3) if created_at else None,
    }
    batches = placement_batches(seen, poller.revisions)
    placed = [(b["committed_by"] - created_wall, b["tasks"]) for b in batches]
    report["scheduler_batches"] = [
        {**b, "assigned_at": round(b["assigned_at"] - created_wall, 3),
         "committed_after": round(b["committed_after"] - created_wall, 3),
         "committed_by": round(b["committed_by"] - created_wall, 3)}
        for b in batches
    ]  # fmt: skip
    if batches and sum(b["tasks"] for b in batches) == m:
        last = batches[-1]
        report["placements_per_second"] = round(m / (last["committed_by"] - created_wall), 1)
        timing["request_to_first_placement_committed_s"] = round(batches[0]["committed_by"] - created_wall, 3)
        timing["request_to_last_placement_committed_s"] = round(last["committed_by"] - created_wall, 3)
        timing["request_to_last_placement_committed_lower_bound_s"] = round(
            last["committed_after"] - created_wall, 3
        )
    else:
        report["placements_per_second"] = None
        report["tasks_placed"] = sum(b["tasks"] for b in batches)
    latencies = [running_at[i] - seen[i].created for i in running_at if i in seen]
    from_request = [t - created_wall for t in running_at.values()]
    latency = distribution(latencies)
    report["create_to_running_p50_s"] = latency.get("p50")
    report["create_to_running_p99_s"] = latency.get("p99")
    report["latency_s"] = {
        "task_created_to_running": latency,
        "request_to_running": distribution(from_request),
        "created_to_assigned": distribution([s.status_at - s.created for s in seen.values() if s.state == TaskState.ASSIGNED]),
        "assigned_to_agent": distribution([s.received - s.status_at for s in seen.values() if s.state == TaskState.ASSIGNED]),
        "agent_to_running": distribution([running_at[i] - seen[i].received for i in running_at if i in seen]),
    }  # fmt: skip
    if running_at:
        timing["request_to_last_running_agent_clock_s"] = round(max(running_at.values()) - created_wall, 3)
    report["timing"] = timing
    report["manager_rss_mb"] = round(sampler.rss_max / MIB, 1)
    report["manager_rss_after_mb"] = round(proc.memory_info().rss / MIB, 1)
    # CPU over time (from the sampler), and the manager's CPU until the last placement and after it
    offset = created - sampler.started_at
    timeline = [{**x, "t": round(x["t"] - offset, 2)} for x in sampler.samples if x["t"] - offset >= -1.0]
    step = max(1, len(timeline) // 400)
    report["timeline"] = timeline[::step]
    if report.get("placements_per_second"):
        placed_at = batches[-1]["committed_by"] - created_wall
        previous_t = 0.0
        until = after = 0.0
        for x in timeline:
            if x["t"] <= 0:
                previous_t = x["t"]
                continue
            spent = x["manager_cores"] * (x["t"] - max(previous_t, 0.0))
            if x["t"] <= placed_at:
                until += spent
            else:
                after += spent
            previous_t = x["t"]
        report["manager_cpu_split_s"] = {
            "until_last_placement": round(until, 1), "after_last_placement": round(after, 1),
            "note": "integrated from the sampler's rates (0.25 s steps)",
        }  # fmt: skip
    manager_stalls = [(t - created_wall, v) for t, _, v in poller.revisions if t >= created_wall and v >= 1.0]
    agent_stalls = [(t - created, lag) for t, lag in lag_samples if t >= created and lag >= 1.0]
    report["stalls"] = {  # seconds since the create request, and how long
        "manager_healthz_over_1s": [(round(t, 1), round(v, 2)) for t, v in manager_stalls][:40],
        "agents_loop_lag_over_1s": [(round(t, 1), round(v, 2)) for t, v in agent_stalls][:40],
    }
    report["agent_reports"] = {"reports": tally.reports, "statuses_by_state": dict(tally.updates)}
    report["poll"] = {
        "interval_s": args.poll_interval,
        "summary_interval_s": args.summary_interval,
        "summary_polls": len(poller.polls),
        "summary_request_seconds": distribution([p[3] for p in poller.polls]),
        "healthz_polls": len(poller.revisions),
        "healthz_request_seconds_during_schedule": distribution(
            [r[2] for r in poller.revisions if created_wall <= r[0] <= created_wall + schedule_s]
        ),
        "errors": len(poller.errors),
        "error_samples": poller.errors[:5],
    }
    if spies:
        report["profile"] = {spy.path.name: summarize_profile(spy.path, spy.rules) for spy in spies}

    # for the plot only (popped before the JSON is written), as seconds since the create request
    report["_plot"] = {
        "polls": poller.polls,
        "placed": placed,
        "running_agent_clock": sorted(from_request),
        "latencies": sorted(latencies),
        "samples": sampler.samples,
        "created_offset": created - sampler.started_at,
        "agents_loop_lag": [(t - created, lag) for t, lag in lag_samples if lag > 0.05],
        "manager_healthz": [(t - created_wall, latency) for t, _, latency in poller.revisions],
    }


def write_outputs(report: dict[str, Any], json_path: Path, png_path: Path | None) -> Path | None:
    """Write the JSON, and the PNG if asked for and there is something to draw; returns the PNG's path."""
    plot_data = report.pop("_plot", None)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if png_path is None or not plot_data:
        return None
    png_path.parent.mkdir(parents=True, exist_ok=True)
    plot(report, plot_data, png_path)
    return png_path


def plot(report: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, m = report["nodes"], report["tasks"]
    fig, ((ax_run, ax_lat), (ax_cpu, ax_stall)) = plt.subplots(2, 2, figsize=(16, 10))
    fig.suptitle(
        f"treeherd schedule: {m:,} hollow tasks on {n:,} agents (real WebSocket agents in one process),"
        f" SQLite store, {report['machine']['cpu_count']} CPUs ({report['date'][:10]})"
    )

    def cumulative(times: list[float]) -> tuple[list[float], list[int]]:
        return [0.0, *times], [0, *range(1, len(times) + 1)]

    if data["placed"]:
        xs, ys, done = [0.0], [0], 0
        for at, count in data["placed"]:
            done += count
            xs.append(at)
            ys.append(done)
        ax_run.step(xs, ys, where="post", label="ASSIGNED (placement batches committed)")
    if data["running_agent_clock"]:
        ax_run.step(
            *cumulative(data["running_agent_clock"]), where="post", label="RUNNING (agent's timestamp)"
        )
    polls = data["polls"]
    if polls:
        ax_run.plot(
            [p[0] for p in polls], [p[1] for p in polls], "o-", ms=3, label="RUNNING (API summary polls)"
        )
    ax_run.axhline(m, color="grey", lw=0.8, ls=":")
    ax_run.set_xlabel("seconds since the create request")
    ax_run.set_ylabel("tasks")
    ax_run.set_title("Tasks over time")
    ax_run.grid(True, alpha=0.3)
    ax_run.legend(loc="lower right", fontsize=8)

    latencies = data["latencies"]
    if latencies:
        ys = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax_lat.plot(latencies, ys, label="task created -> RUNNING")
        for p in (50, 99):
            v = percentile(latencies, p)
            ax_lat.axvline(v, ls="--", lw=0.8, color="grey")
            ax_lat.annotate(
                f"p{p} {v:.2f} s", (v, p / 100), fontsize=8, xytext=(3, -12), textcoords="offset points"
            )
    ax_lat.set_xlabel("seconds")
    ax_lat.set_ylabel("fraction of tasks")
    ax_lat.set_title("Create -> RUNNING latency (CDF)")
    ax_lat.grid(True, alpha=0.3)
    ax_lat.legend(loc="lower right", fontsize=8)

    samples = data["samples"]
    offset = data["created_offset"]
    if samples:
        ts = [s["t"] - offset for s in samples]
        # A sampler held up between reading the clock and a CPU counter shows a spike and then a dip
        # (their sum is right): the plot clips rates to the machine's cores.
        cores = report["machine"]["cpu_count"] or 2

        def clip(key: str) -> list[float]:
            return [min(max(s[key], 0.0), cores) for s in samples]

        ax_cpu.plot(ts, clip("manager_cores"), label="manager process")
        ax_cpu.plot(ts, clip("agents_cores"), label="agents process")
        ax_cpu.plot(ts, clip("machine_cores"), label="whole machine", color="black", lw=0.8)
        ax_rss = ax_cpu.twinx()
        ax_rss.plot(ts, [s["manager_rss_mb"] for s in samples], color="tab:red", ls=":", label="manager RSS")
        ax_rss.set_ylabel("manager RSS (MiB)", color="tab:red")
        ax_cpu.axvline(0, color="grey", lw=0.8, ls="--")
    ax_cpu.set_xlabel("seconds since the create request (agents connect before 0)")
    ax_cpu.set_ylabel("CPU (cores)")
    ax_cpu.set_title("CPU use and manager RSS")
    ax_cpu.grid(True, alpha=0.3)
    ax_cpu.legend(loc="upper left", fontsize=8)

    healthz = data["manager_healthz"]
    if healthz:
        ax_stall.plot([t for t, _ in healthz], [v for _, v in healthz], ".", ms=3,
                      label="manager: GET /healthz round trip (its event loop's delay)")  # fmt: skip
    lag = data["agents_loop_lag"]
    if lag:
        ax_stall.plot([t for t, _ in lag], [v for _, v in lag], ".", ms=3,
                      label="agents: event loop lag (samples > 50 ms)")  # fmt: skip
    settings = report.get("cluster_settings") or {}
    grace = settings.get("heartbeat_period_s", 5.0) * settings.get("heartbeat_grace_multiplier", 3.0)
    ax_stall.axhline(grace, color="tab:red", ls="--", lw=0.8, label=f"heartbeat grace ({grace:g} s)")
    ax_stall.set_yscale("log")
    ax_stall.set_xlabel("seconds since the create request")
    ax_stall.set_ylabel("seconds (log)")
    ax_stall.set_title("Stalls: how late each side answers")
    ax_stall.grid(True, which="both", alpha=0.3)
    ax_stall.legend(loc="upper left", fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report.get("phases", {}).get("schedule", {})
    lat = report.get("latency_s", {}).get("task_created_to_running", {})

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return [
        f"schedule: {report['tasks']:,} tasks on {report['nodes']:,} agents: {report.get('status')}",
        f"  all RUNNING (API) after  {fmt(report.get('seconds_to_all_running'), '.2f')} s"
        f" (acknowledged to the agents after {fmt(report.get('seconds_to_all_running_acknowledged'), '.2f')} s);"
        f" tasks running {report.get('tasks_running', 0):,}",
        f"  placements/s             {fmt(report.get('placements_per_second'), ',.0f')}"
        f" ({len(report.get('scheduler_batches', []))} placement transactions)",
        f"  create -> RUNNING        p50 {fmt(lat.get('p50'), '.2f')} s, p99 {fmt(lat.get('p99'), '.2f')} s",
        f"  manager CPU              {fmt(s.get('manager_cpu_s'), '.1f')} s"
        f" ({fmt(s.get('manager_cores'), '.2f')} cores; main {fmt(s.get('manager_main_thread_cpu_s'), '.1f')} s),"
        f" RSS max {fmt(report.get('manager_rss_mb'), '.0f')} MiB",
        f"  agents process CPU       {fmt(s.get('agents_cpu_s'), '.1f')} s ({fmt(s.get('agents_cores'), '.2f')} cores;"
        f" DB threads {fmt(s.get('agents_db_threads_cpu_s'), '.1f')} s); machine busy"
        f" {fmt(s.get('machine_busy_cores'), '.2f')} cores",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="hollow agents (default 100)")
    parser.add_argument("--tasks", type=int, default=10_000, help="replicas of the service (default 10000)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--json", type=Path, default=None, help="JSON path (default OUT/schedule-NxM.json)")
    parser.add_argument("--png", type=Path, default=None, help="PNG path (default OUT/schedule-NxM.png)")
    parser.add_argument("--no-png", action="store_true", help="do not draw the PNG")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for every task to run (default 300)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=180.0, help="seconds for every agent to be ready (default 180)"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="idle seconds before the service (default 3)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="/healthz polls (default 0.5 s)")
    parser.add_argument(
        "--summary-interval", type=float, default=2.0,
        help="service summary polls until the agents see every status acknowledged, then every"
        " --poll-interval (default 2 s: a summary costs the manager O(tasks))",
    )  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=0.25, help="CPU samples (default 0.25 s)")
    parser.add_argument(
        "--agent-dir",
        default=None,
        help="where the agents' data dirs go (default: the temp dir; try /dev/shm)",
    )
    parser.add_argument(
        "--heartbeat-period", type=float, default=None,
        help="set the cluster's heartbeat period first (default: leave it, 5 s; nodes are down after 3 periods)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-interval", type=float, default=None,
        help="sys.setswitchinterval for this process (the agents), in seconds (default: Python's, 0.005)",
    )  # fmt: skip
    parser.add_argument(
        "--agent-db-threads", type=int, default=0,
        help="share this many DB threads between all agents (default 0: one per agent, as treeherd does)",
    )  # fmt: skip
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds for the manager to start"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the manager while the service schedules"
    )
    parser.add_argument(
        "--profile-agents", action="store_true", help="with --profile: py-spy this process too"
    )
    parser.add_argument(
        "--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="wait up to this long for the machine's other load to drop below 0.25 cores (default 120; 0: no)",
    )  # fmt: skip
    parser.add_argument("--tag", default="", help="appended to the output names: schedule-NxM-TAG.*")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and the logs)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.tasks < 1:
        parser.error("--nodes and --tasks must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    processes.STARTUP_SECONDS = max(processes.STARTUP_SECONDS, args.startup_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"schedule-{args.nodes}x{args.tasks}" + (f"-{args.tag}" if args.tag else "")
    report: dict[str, Any] = {
        "benchmark": "schedule",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nodes": args.nodes,
        "tasks": args.tasks,
        "tasks_running": 0,
        "seconds_to_all_running": None,
        "placements_per_second": None,
        "create_to_running_p50_s": None,
        "create_to_running_p99_s": None,
        "manager_cpu_s": None,
        "manager_rss_mb": None,
        "status": "failed",
        "machine": machine_info(),
        "parameters": {
            "nodes": args.nodes,
            "tasks": args.tasks,
            "timeout_s": args.timeout,
            "poll_interval_s": args.poll_interval,
            "summary_interval_s": args.summary_interval,
            "settle_s": args.settle,
            "heartbeat_period_s": args.heartbeat_period,
            "agent_dir": args.agent_dir,
            "agent_db_threads": args.agent_db_threads or "one per agent",
            "agents_switch_interval_s": args.switch_interval or sys.getswitchinterval(),
            "profile": args.profile,
            "store": "sqlite (embedded, WAL, synchronous=FULL)",
            "service": {"replicas": args.tasks, "task": {"command": ["hollow"]}, "reservations": "none"},
        },
        "phases": {},
        "_stem": stem,
    }
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        report["parameters"]["agents_loop"] = "uvloop"
    except ImportError:
        runner = asyncio.Runner()
        report["parameters"]["agents_loop"] = "asyncio"
    if args.quiet_wait > 0:
        report["machine"]["before_start"] = quiet = wait_quiet(args.quiet_wait)
        if not quiet["quiet"]:
            print(
                f"warning: the machine is busy ({quiet['busy_cores_last_windows']} cores in use)", flush=True
            )
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    started = time.perf_counter()
    run = Run()
    error: BaseException | None = None
    work = Path(tempfile.mkdtemp(prefix="treeherd-schedule-"))
    # The agents' warnings (sessions lost, managers unreachable...) are counted, and kept in a file
    # rather than printed: a thousand agents losing their sessions would flood the terminal.
    agent_logs = CountingHandler(work / "agents.log")
    treeherd_logger = logging.getLogger("treeherd")
    treeherd_logger.addHandler(agent_logs)
    treeherd_logger.setLevel(logging.WARNING)
    treeherd_logger.propagate = False
    if args.agent_dir:  # a directory of our own inside it, removed afterwards
        Path(args.agent_dir).mkdir(parents=True, exist_ok=True)
        agents_dir = Path(tempfile.mkdtemp(prefix="treeherd-schedule-agents-", dir=args.agent_dir))
    else:
        agents_dir = work / "agents"
    try:
        with runner:
            try:
                runner.run(benchmark(args, work, agents_dir, report, run))
            except Exception as failure:  # reported below, after everything is stopped
                error = failure
            finally:
                report["agent_sessions_established"] = sum(a.session.sessions for a in run.agents)
                report["agents_stop"] = runner.run(stop_agents(run))
                if run.db_pool is not None:
                    run.db_pool.shutdown(wait=False, cancel_futures=True)
    finally:
        for spy in run.spies:
            spy.stop()
        for thread in run.threads:
            thread.stopping.set()
            if isinstance(thread, Poller):
                thread.wake.set()
        for thread in run.threads:
            thread.join(35.0)  # a poll in flight ends within its 30 s timeout
        manager: ManagerProcess | None = report.pop("_manager", None)
        if manager is not None:
            try:
                report["manager_exit_code"] = manager.stop()
            except Exception as failure:  # SIGKILL below in any case
                report["manager_exit_code"] = repr(failure)
            finally:
                manager.kill()
            report["manager_log"] = summarize_manager_log(manager.log())
            if error is not None:
                report["manager_log_tail"] = manager.log()[-3000:]
        if args.keep:
            print(f"keeping {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.agent_dir and not args.keep:
            shutil.rmtree(agents_dir, ignore_errors=True)
    report.pop("_stem", None)
    placements, all_running = report.get("placements_per_second"), report.get("seconds_to_all_running")
    report["goal"] = {
        "placements_per_second": GOAL_PLACEMENTS_PER_S,
        "placements_met": placements is not None and placements >= GOAL_PLACEMENTS_PER_S,
        "all_running_seconds": GOAL_ALL_RUNNING_S,
        "all_running_met": all_running is not None and all_running <= GOAL_ALL_RUNNING_S,
        "all_running_goal_is_for": "100,000 tasks on 1,000 nodes",
    }
    report["agents_log"] = dict(agent_logs.counts.most_common(12))
    treeherd_logger.removeHandler(agent_logs)
    agent_logs.close()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    if error is not None:
        report["error"] = repr(error)
    json_path = args.json or args.out / f"{stem}.json"
    png_path = write_outputs(report, json_path, None if args.no_png else args.png or args.out / f"{stem}.png")
    print()
    print("\n".join(summary_lines(report)))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    if error is not None:
        print(f"failed: {error!r}", file=sys.stderr)
        return 1
    return 0 if report["status"] == "ok" else 2


if __name__ == "__main__":
    sys.exit(main())
