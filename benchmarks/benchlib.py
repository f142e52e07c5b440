"""What the benchmarks share: where a run happened (machine, versions, the code's commit and whether the
tree was clean), percentiles, CPU counters, a blocking JSON client of the manager's API (for threads),
and an asyncio HTTP/1.1 load generator (keep-alive connections, one request in flight on each)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import psutil

import treeherd

REQUEST_TIMEOUT_S = 60.0  # for one request/response exchange of the load generator


# ---- where it ran -------------------------------------------------------------------------------------
def code_version() -> dict[str, Any]:
    """The commit this treeherd runs from; whether src/ has changes on top of it (others may be editing
    the tree while a long run goes), and whether the whole working tree was clean."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        src_changes = git("status", "--porcelain", "--", "src")
        tree_changes = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "src_modified": bool(src_changes), "tree_clean": not tree_changes}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "treeherd": treeherd.__version__,
        "msgspec": msgspec.__version__,
        "code": code_version(),
    }


def event_loop_runner() -> tuple[asyncio.Runner, str]:
    """An asyncio runner on uvloop when it is installed; and which loop that is."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"


# ---- figures --------------------------------------------------------------------------------------------
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


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(v / 1e6 for v in latencies_ns)
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "p999": round(percentile(values, 99.9), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
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


# ---- CPU -------------------------------------------------------------------------------------------------
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


# ---- a blocking JSON client of the manager (for threads: never on an event loop doing the work) -----------
class ApiError(Exception):
    """The manager answered with something other than 2xx."""


class Api:
    """One keep-alive HTTP/1.1 connection to the manager; `call` reconnects after a failure.

    uvicorn closes a keep-alive connection idle for 5 s: one idle for longer than IDLE_S is closed
    first, and a GET that finds the connection closed anyway is sent once more on a new one."""

    IDLE_S = 2.0

    def __init__(self, host: str, port: int, *, timeout: float = 120.0) -> None:
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


# ---- an asyncio HTTP/1.1 load generator -------------------------------------------------------------------
# (method, target, body)
Request = tuple[str, str, bytes | None]


class ProtocolError(Exception):
    """The server's response is not HTTP/1.1 as this client understands it."""


class TooManyErrors(Exception):
    """More requests failed than the run tolerates."""


class Connection:
    """One keep-alive connection; requests are sent one at a time. Reconnects after a failure or `close`."""

    def __init__(self, host: str, port: int, *, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._host_header = f"{host}:{port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body)."""
        head = f"{method} {target} HTTP/1.1\r\nHost: {self._host_header}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode("ascii") + (body or b"")
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.host, self.port, limit=1 << 20
                    )
                assert self._reader is not None
                self._writer.write(data)
                status, payload, keep_alive = await self._read_response(self._reader)
        except BaseException:
            self.close()  # the connection's state is unknown: start afresh next time
            raise
        if not keep_alive:
            self.close()
        return status, payload

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            if 100 <= status < 200:  # interim response (not expected: no Expect header is sent)
                continue
            break
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        keep_alive = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            payload = await self._read_chunked(reader)
        elif "content-length" in headers:
            payload = await reader.readexactly(int(headers["content-length"]))
        elif status in (204, 304):
            payload = b""
        else:  # delimited by the end of the connection
            payload = await reader.read()
            keep_alive = False
        return status, payload, keep_alive

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:  # bounded by the request timeout
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class ErrorBudget:
    """Counts failed requests; raises TooManyErrors once more than `limit` have failed."""

    limit: int
    count: int = 0
    samples: list[str] = field(default_factory=list)

    def record(self, what: str) -> None:
        self.count += 1
        if len(self.samples) < 20:
            self.samples.append(what)
        if self.count > self.limit:
            raise TooManyErrors(f"{self.count} requests failed; the first: {self.samples[:3]}")


@dataclass
class PhaseResult:
    name: str
    requests: int
    concurrency: int
    seconds: float
    latencies_ns: list[int]
    errors: int
    usage: PhaseUsage

    @property
    def ok(self) -> int:
        return len(self.latencies_ns)

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        u, wall = self.usage, self.seconds or math.inf
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "latency_ms": latency_summary(self.latencies_ns),
            # utilisation 1.0 = one core busy for the whole phase
            "server_cpu_seconds": round(u.server_cpu, 2),
            "server_cpu_utilisation": round(u.server_cpu / wall, 3),
            "server_main_thread_cpu_utilisation": round(u.server_main_cpu / wall, 3),
            "server_other_threads_cpu_utilisation": round(
                max(0.0, u.server_cpu - u.server_main_cpu) / wall, 3
            ),
            # what the manager's CPU time per request is (less sensitive to a noisy machine than rates)
            "server_cpu_us_per_request": round(u.server_cpu / self.ok * 1e6) if self.ok else 0,
            "client_cpu_seconds": round(u.client_cpu, 2),
            "client_cpu_utilisation": round(u.client_cpu / wall, 3),
            # bytes the manager caused to be written to storage (Linux /proc/PID/io write_bytes)
            "server_disk_write_bytes": u.server_write_bytes,
            "server_disk_write_bytes_per_request": round(u.server_write_bytes / self.ok) if self.ok else 0,
            # shares of all CPUs' time, machine-wide: busy (not idle or iowait), waiting on I/O
            "machine_cpu_busy_fraction": round(u.machine_busy / u.machine_total, 3) if u.machine_total else 0,
            "machine_cpu_iowait_fraction": round(u.machine_iowait / u.machine_total, 3)
            if u.machine_total
            else 0,
            # CPU (in cores) used by everything but the manager and this client: the noise
            "other_cpu_cores": round((u.machine_busy - u.server_cpu - u.client_cpu) / wall, 2),
        }


@dataclass
class PhaseUsage:
    """Resources used (a snapshot, or the difference of two): CPU seconds, bytes written to storage."""

    server_cpu: float = 0.0
    server_main_cpu: float = 0.0  # the manager's main thread: the event loop, HTTP, validation, state
    client_cpu: float = 0.0
    server_write_bytes: int = 0
    machine_busy: float = 0.0
    machine_iowait: float = 0.0
    machine_total: float = 0.0

    @classmethod
    def now(cls, server: psutil.Process) -> PhaseUsage:
        main = next((t for t in server.threads() if t.id == server.pid), None)
        try:
            write_bytes = server.io_counters().write_bytes
        except (AttributeError, psutil.Error):  # no /proc/PID/io here
            write_bytes = 0
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        total = sum(machine)
        return cls(
            server_cpu=cpu_seconds(server),
            server_main_cpu=main.user_time + main.system_time if main else 0.0,
            client_cpu=cpu_seconds(psutil.Process()),
            server_write_bytes=write_bytes,
            machine_busy=total - idle,
            machine_iowait=getattr(machine, "iowait", 0.0),
            machine_total=total,
        )

    def __sub__(self, other: PhaseUsage) -> PhaseUsage:
        return PhaseUsage(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __add__(self, other: PhaseUsage) -> PhaseUsage:
        return PhaseUsage(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


async def run_phase(
    name: str,
    host: str,
    port: int,
    requests: Sequence[Request],
    *,
    concurrency: int,
    budget: ErrorBudget,
    server: psutil.Process,
) -> PhaseResult:
    """Send every request over `concurrency` keep-alive connections; each connection one at a time."""
    next_index = iter(range(len(requests)))  # shared by the workers: each index is taken once
    latencies: list[int] = []
    errors_before = budget.count

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            for index in next_index:
                method, target, body = requests[index]
                started = time.perf_counter_ns()
                try:
                    status, payload = await conn.request(method, target, body)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ProtocolError, ValueError) as error:  # fmt: skip
                    budget.record(f"{method} {target}: {error!r}")
                    continue
                elapsed = time.perf_counter_ns() - started
                if 200 <= status < 300:
                    latencies.append(elapsed)
                else:
                    budget.record(f"{method} {target}: HTTP {status} {payload[:300]!r}")
        finally:
            conn.close()

    before = PhaseUsage.now(server)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(concurrency, len(requests)))):
            group.create_task(worker())
    seconds = time.perf_counter() - started
    usage = PhaseUsage.now(server) - before
    return PhaseResult(
        name=name,
        requests=len(requests),
        concurrency=concurrency,
        seconds=seconds,
        latencies_ns=latencies,
        errors=budget.count - errors_before,
        usage=usage,
    )


def merge_phases(name: str, parts: list[PhaseResult]) -> PhaseResult:
    return PhaseResult(
        name=name,
        requests=sum(p.requests for p in parts),
        concurrency=parts[0].concurrency if parts else 0,
        seconds=sum(p.seconds for p in parts),
        latencies_ns=[v for p in parts for v in p.latencies_ns],
        errors=sum(p.errors for p in parts),
        usage=sum((p.usage for p in parts), PhaseUsage()),
    )


async def get_json(host: str, port: int, target: str) -> Any:
    conn = Connection(host, port)
    try:
        status, payload = await conn.request("GET", target)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {target}: HTTP {status} {payload[:300]!r}")
    return json.loads(payload)


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise RuntimeError(f"the manager listens on {url}, not on 127.0.0.1: refusing to send load there")
    return parts.hostname, parts.port
