"""The agent component: a local DB, a worker and a session, run together until stopped.

`Agent(manager_url, data_dir, executor=...)` does no work until `run()`, which opens the local DB
(`<data_dir>/agent.db`), resumes the tasks it holds, and keeps a session with the manager; `stop()`
asks both to end. Stopping leaves tasks running for the next agent to resume (live restore), or
with `live_restore=False` stops them first. `connect` replaces the
WebSocket dialer (tests pass an in-memory channel pair). One failing part stops the whole agent.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path

import psutil

from treeherd import __version__
from treeherd.agent.db import TaskDB
from treeherd.agent.dependencies import DependencyProxy, HaproxyMode
from treeherd.agent.kept_logs import KeptLogs
from treeherd.agent.logs import LogStreamer
from treeherd.agent.proxy_reports import ProxyReporter
from treeherd.agent.registrar import Registrar
from treeherd.agent.session import SILENCE_PERIODS, Connect, Session
from treeherd.agent.worker import Worker
from treeherd.core.tasks.agent_state import AgentState
from treeherd.executors.base import EnforcesLimits, Engine, Executor, Leftovers
from treeherd.executors.hollow import HollowExecutor
from treeherd.executors.process import ProcessExecutor
from treeherd.model.gateway import Figure
from treeherd.model.objects import LimitSupport, MachineKind
from treeherd.model.proxies import ProxyEventType
from treeherd.model.wire import Register, SessionStarted
from treeherd.runtime import utc_now

__all__ = ["EXECUTORS", "Agent", "describe_machine", "make_executor"]

log = logging.getLogger(__name__)

DB_FILE = "agent.db"

# Executors by the name `treeherd agent --executor` takes; each is made for the agent's data directory.
EXECUTORS: dict[str, Callable[[Path], Executor]] = {
    "process": lambda data_dir: ProcessExecutor(data_dir / "process"),
    "hollow": lambda _data_dir: HollowExecutor(),
    "docker": lambda data_dir: _docker_executor(data_dir / "docker", None),
}
# How long a process left by a task this agent no longer knows of gets to stop after SIGTERM.
ORPHAN_GRACE_S = 10.0

# What `/sys/class/dmi/id/sys_vendor` or `product_name` says on common hypervisors and clouds.
_VIRTUAL_VENDORS = (
    "qemu",
    "kvm",
    "vmware",
    "virtualbox",
    "xen",
    "microsoft corporation",
    "amazon ec2",
    "google",
    "openstack",
    "bochs",
    "parallels",
    "hetzner",
    "digitalocean",
)


def _docker_executor(root: Path, hostname: str | None) -> Executor:
    """The docker executor, imported only when asked for: its client library is an optional extra."""
    try:
        from treeherd.executors.docker import DockerExecutor
    except ImportError as error:
        raise ValueError(
            f"the docker executor needs aiodocker ({error}): pip install 'treeherd[docker]'"
        ) from None
    return DockerExecutor(root, hostname=hostname)


def make_executor(name: str, data_dir: Path, hostname: str | None = None) -> Executor:
    """The executor `name` for an agent's data directory (and host name, which errors name)."""
    if name == "docker":
        return _docker_executor(Path(data_dir) / "docker", hostname)
    try:
        return EXECUTORS[name](Path(data_dir))
    except KeyError:
        raise ValueError(f"unknown executor {name!r}: choose from {', '.join(sorted(EXECUTORS))}") from None


@cache
def detect_machine_kind() -> MachineKind:
    """`virtual` on a hypervisor or in a container, else `physical` (a best guess: override it)."""
    try:
        if " hypervisor" in Path("/proc/cpuinfo").read_text():
            return "virtual"
    except OSError:
        return "virtual"
    for name in ("sys_vendor", "product_name"):
        try:
            text = Path("/sys/class/dmi/id", name).read_text().strip().lower()
        except OSError:
            continue
        if any(vendor in text for vendor in _VIRTUAL_VENDORS):
            return "virtual"
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return "virtual"
    return "physical"


def machine_ips() -> list[str]:
    """The machine's addresses other than loopback and link-local, IPv4 first."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(address.address.split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local):
                found.add(ip)
    return [str(ip) for ip in sorted(found, key=lambda ip: (ip.version, ip))]


def describe_machine(
    hostname: str,
    labels: Mapping[str, str],
    machine_kind: MachineKind | None = None,
    limits: LimitSupport | None = None,
) -> Register:
    """What the agent offers, as psutil sees it (and which task limits its executor enforces), in the
    message that opens a session."""
    return Register(
        hostname=hostname,
        ips=machine_ips(),
        machine_kind=machine_kind or detect_machine_kind(),
        labels=dict(labels),
        cpus=float(psutil.cpu_count() or 0),
        memory_bytes=int(psutil.virtual_memory().total),
        version=__version__,
        limits=limits,
    )


class Agent:
    """The agent of one machine. See the module docstring."""

    name = "agent"

    def __init__(
        self,
        manager_url: str,
        data_dir: Path,
        *,
        executor: Executor,
        hostname: str | None = None,
        labels: Mapping[str, str] | None = None,
        machine_kind: MachineKind | None = None,
        connect: Connect | None = None,
        grace_s: float = 10.0,
        haproxy: HaproxyMode = "auto",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        silence_factor: float = SILENCE_PERIODS,
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        state: AgentState | None = None,
        kept_history: int = 5,
        live_restore: bool = True,
    ) -> None:
        self.manager_url = manager_url
        self.data_dir = Path(data_dir)
        self.hostname = hostname or socket.gethostname()
        self.labels = dict(labels or {})
        self.machine_kind = machine_kind
        self.executor = executor
        self.db = TaskDB(self.data_dir / DB_FILE)
        self.kept_logs = KeptLogs(self.data_dir / "kept-logs", history=kept_history)
        self.worker = Worker(
            executor,
            self.db,
            now=now,
            grace_s=grace_s,
            state=state,
            kept_logs=self.kept_logs,
            live_restore=live_restore,
            hostname=self.hostname,
        )
        self.logs = LogStreamer(executor, self.kept_logs)
        self.dependencies = DependencyProxy(
            self.worker.state, self.data_dir / "haproxy", mode=haproxy, on_event=self._proxy_event
        )
        self.session = Session(
            manager_url,
            self.describe,
            self.worker,
            connect=connect,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            silence_factor=silence_factor,
            rng=rng,
            logs=self.logs,
            dependencies=self.dependencies,
        )
        self.worker.set_sender(self.session.send_report)
        self.session.on_started = self._session_started
        self.registrar = Registrar(self.worker.state, self.session)
        self.proxy_reports = ProxyReporter(self.session)
        self.worker.on_change = self._tasks_changed

    @property
    def state(self) -> AgentState:
        return self.worker.state

    def describe(self) -> Register:
        limits = self.executor.limit_support() if isinstance(self.executor, EnforcesLimits) else None
        return describe_machine(self.hostname, self.labels, self.machine_kind, limits)

    async def run(self) -> None:
        await self.db.open()
        log.info("agent %s: executor %s, manager %s", self.hostname, self.executor.name, self.manager_url)
        if isinstance(self.executor, EnforcesLimits):  # detect the host's cgroups now, not mid-task
            log.info("agent %s: task limits %s", self.hostname, self.executor.limit_support())
        try:
            await self._clean_up_unknown_tasks()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.worker.run(), name="agent-worker")
                group.create_task(self.registrar.run(), name="agent-registrar")
                group.create_task(self.dependencies.run(), name="agent-haproxy")
                group.create_task(self.proxy_reports.run(), name="agent-proxy-reports")
                group.create_task(self._session_until_worker_ends(), name="agent-session")
        finally:
            await self.db.close()
            if isinstance(self.executor, Engine):
                await self.executor.close()

    async def _clean_up_unknown_tasks(self) -> None:
        """Stop and remove what the executor keeps of tasks the local DB does not know (a DB lost or
        reset, a removal cut short): nobody would ever stop them otherwise. Tasks the DB knows are the
        worker's: it resumes them, or removes those the manager no longer assigns."""
        if not isinstance(self.executor, Leftovers):
            return
        known = {stored.task.id for stored in await self.db.load()}
        ids = self.executor.task_ids()
        if inspect.isawaitable(ids):
            try:
                ids = await ids
            except Exception as error:  # dockerd away: its containers are looked at next time
                log.warning("agent %s: cannot list the executor's tasks: %s", self.hostname, error)
                return
        for task_id in ids:
            if task_id in known:
                continue
            log.warning("agent %s: stopping and removing unknown task %s", self.hostname, task_id)
            try:
                await self.executor.stop_orphan(task_id, ORPHAN_GRACE_S)
                await self.executor.purge(task_id)
            except Exception:
                log.exception("could not clean up unknown task %s", task_id)

    async def _session_until_worker_ends(self) -> None:
        try:
            await self.session.run()
        finally:
            # Without a session the worker has nobody to report to: all end together.
            self.worker.stop()
            self.registrar.stop()
            self.dependencies.stop()
            self.proxy_reports.stop()

    def stop(self) -> None:
        self.session.stop()
        self.worker.stop()
        self.registrar.stop()
        self.dependencies.stop()
        self.proxy_reports.stop()

    def _session_started(self, started: SessionStarted) -> None:
        if started.task_history != self.kept_logs.history:
            self.kept_logs.history = started.task_history
            self.kept_logs.prune()

    def _proxy_event(self, type: ProxyEventType, reason: str, figures: dict[str, Figure]) -> None:
        self.proxy_reports.post(type, reason, figures)

    def _tasks_changed(self) -> None:
        self.registrar.changed()
        self.dependencies.changed()
