"""py-spy on a benchmark's processes: record raw stacks while a phase runs, and sum them up by thread,
by component of treeherd (the first rule whose frame or thread name matches) and by function."""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

PY_SPY_STOP_S = 60.0  # for py-spy to write its profile after SIGINT


class PySpy:
    """`py-spy record --format raw` on one pid until `stop()` (SIGINT: py-spy then writes its file)."""

    def __init__(self, pid: int, path: Path, *, rate: int, log: Path, rules: list[tuple[str, str]]) -> None:
        self.rules = rules
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            raise RuntimeError(
                "py-spy is not installed: install the bench extras (.venv/bin/pip install -e '.[bench]')"
            )
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
