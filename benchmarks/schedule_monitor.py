"""The schedule benchmark's monitors: CPU and memory counters of the manager, the agents' processes, the
benchmark's own process and the machine (`Usage` for a phase, `Sampler` over time), and `Poller`, which
watches the manager's revision and the service's summary from a thread of its own."""

from __future__ import annotations

import http.client
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from benchlib import Api, ApiError, cpu_seconds, thread_cpu

MIB = 1024 * 1024


def thread_split(proc: psutil.Process) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of a process, threads that ended included (0, 0
    once it is gone). Reads two /proc files, not one per thread: with a thousand agent DB threads,
    listing them all takes tens of milliseconds."""
    try:
        total = cpu_seconds(proc)
    except psutil.Error:
        return 0.0, 0.0
    main = thread_cpu(proc.pid, proc.pid)
    return main, max(0.0, total - main)


def system_cpu(proc: psutil.Process) -> float:
    """The CPU seconds a process spent in the kernel (0 once it is gone)."""
    try:
        return float(proc.cpu_times().system)
    except psutil.Error:
        return 0.0


def cpu_of(procs: list[psutil.Process]) -> float:
    """The CPU seconds of these processes together (those gone count 0)."""
    total = 0.0
    for proc in procs:
        try:
            total += cpu_seconds(proc)
        except psutil.Error:
            pass
    return total


@dataclass
class Usage:
    """Cumulative counters at one instant; subtract two for a phase."""

    wall: float = 0.0
    manager_cpu: float = 0.0
    manager_main: float = 0.0
    manager_others: float = 0.0
    manager_system: float = 0.0
    agents_cpu: float = 0.0
    agents_main: float = 0.0
    agents_others: float = 0.0
    agents_system: float = 0.0
    bench_cpu: float = 0.0
    machine_busy: float = 0.0
    machine_total: float = 0.0

    @classmethod
    def now(cls, manager: psutil.Process, agents: list[psutil.Process]) -> Usage:
        """The manager, the agents' processes (together) and this process (the benchmark's polls)."""
        manager_main, manager_others = thread_split(manager)
        splits = [thread_split(proc) for proc in agents]
        agents_main = sum(main for main, _ in splits)
        agents_others = sum(others for _, others in splits)
        machine = psutil.cpu_times()
        total = sum(machine)
        return cls(
            wall=time.perf_counter(),
            manager_cpu=cpu_seconds(manager),
            manager_main=manager_main,
            manager_others=manager_others,
            manager_system=system_cpu(manager),
            agents_cpu=agents_main + agents_others,
            agents_main=agents_main,
            agents_others=agents_others,
            agents_system=sum(system_cpu(proc) for proc in agents),
            bench_cpu=cpu_seconds(psutil.Process()),
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
            "manager_system_cpu_s": round(self.manager_system, 2),  # in the kernel, of manager_cpu_s
            "manager_cores": round(self.manager_cpu / wall, 3),
            "agents_cpu_s": round(self.agents_cpu, 2),
            "agents_main_thread_cpu_s": round(self.agents_main, 2),
            "agents_db_threads_cpu_s": round(max(0.0, self.agents_others), 2),  # no -0.0 from ticks
            "agents_system_cpu_s": round(self.agents_system, 2),  # in the kernel, of agents_cpu_s
            "agents_cores": round(self.agents_cpu / wall, 3),
            "benchmark_process_cpu_s": round(self.bench_cpu, 2),
            "harness_cpu_s": round(self.agents_cpu + self.bench_cpu, 2),
            "harness_cores": round((self.agents_cpu + self.bench_cpu) / wall, 3),
            "machine_busy_cores": round(machine, 3),
            "machine_busy_fraction": round(machine / cores, 3),
            "other_processes_cores": round(
                machine - (self.manager_cpu + self.agents_cpu + self.bench_cpu) / wall, 3
            ),
        }


class Sampler(threading.Thread):
    """CPU and memory every `interval` seconds: the manager, the agents' processes (`agents`, set once
    they are started), this process (the benchmark) and the machine.

    A thread of its own that makes no requests, so neither a busy manager nor the agents delay it. Each
    counter's rate uses the times it was read at."""

    def __init__(self, manager: psutil.Process, *, interval: float) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self._manager = manager
        self._interval = interval
        self.agents: list[psutil.Process] = []
        self.stopping = threading.Event()
        self.samples: list[dict[str, float]] = []
        self.rss_max = 0
        self.started_at = time.perf_counter()

    def _read(self, me: psutil.Process) -> tuple[tuple[float, float, float], ...] | None:
        try:
            manager = (time.perf_counter(), cpu_seconds(self._manager), 0.0)
            rss = self._manager.memory_info().rss
        except psutil.Error:
            return None
        self.rss_max = max(self.rss_max, rss)
        agents_at = time.perf_counter()
        agents = (agents_at, cpu_of(self.agents), cpu_seconds(me))  # me: the sampler and the poller
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return manager, agents, (busy, sum(machine), 0.0), (time.perf_counter(), float(rss), 0.0)

    def run(self) -> None:
        me = psutil.Process()
        cores = os.cpu_count() or 1
        previous = self._read(me)
        while previous is not None and not self.stopping.wait(self._interval):
            current = self._read(me)
            if current is None:
                break
            (m0, mc0, _), (a0, ac0, bc0), (b0, t0, _), _ = previous
            (m1, mc1, _), (a1, ac1, bc1), (b1, t1, _), (now, rss, _) = current
            self.samples.append(
                {
                    "t": round(now - self.started_at, 3),
                    "manager_cores": round((mc1 - mc0) / max(m1 - m0, 1e-6), 3),
                    "agents_cores": round(max(0.0, ac1 - ac0) / max(a1 - a0, 1e-6), 3),
                    "benchmark_cores": round((bc1 - bc0) / max(a1 - a0, 1e-6), 3),
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
        service: str,
        target: int,
        interval: float,
        summary_interval: float,
        all_running: Callable[[float], None],
    ) -> None:
        super().__init__(name="bench-poller", daemon=True)
        self._api = Api(host, port, timeout=30.0)
        self._service = service
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
            summary = self._api.call("GET", f"/api/v1/services/{self._service}")
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
