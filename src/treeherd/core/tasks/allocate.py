"""The allocator's decision: host ports for tasks that ask for one without a number.

Dynamic ports come from one cluster-wide range and are unique across every live task, so tasks on
machines that share an address (several agents on one host) never collide. A task passes from NEW to
PENDING once it has what it needs; a restart waiting out its delay stays NEW until `restart_at`. A task
that needs nothing from the allocator (no port without a number, no required service, no restart delay)
is created PENDING (`creation_allocation`): its allocation cannot wait for anything, and doing it at
creation saves a store write per task (a quarter of a task's writes on its way to RUNNING).

Something outside the cluster may hold a port of the range on a host: the agent then rejects the task
with `port_in_use_message`, and the allocator, reading the port back with `busy_port_of`, hands that
port to no task for `BUSY_S` (the pool's `busy`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import msgspec

from treeherd.model.ops import Op, Update
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

PORT_RANGE = (30000, 32767)
BUSY_S = 300.0  # how long a port an agent found in use is not handed out

_IN_USE = re.compile(r"\bport (\d+) is in use on ")


def port_in_use_message(port: int, hostname: str, holder: str) -> str:
    """What an agent says when a task's host port is taken: `holder` is "pid N, NAME" or ""."""
    return f"port {port} is in use on {hostname} " + (f"({holder})" if holder else "by another process")


def busy_port_of(task: Task) -> int | None:
    """The port an agent rejected `task` for (it was in use on the host), if that is why."""
    if task.status.state != TaskState.REJECTED:
        return None
    found = _IN_USE.search(task.status.error)
    return int(found.group(1)) if found else None


class PortPool:
    """The dynamic ports in use; next-fit allocation so a freed port is not reused at once."""

    def __init__(self, low: int = PORT_RANGE[0], high: int = PORT_RANGE[1]) -> None:
        self.low = low
        self.high = high
        self.in_use: set[int] = set()
        # Ports some host has in use outside the cluster, and until when they are not handed out.
        self.busy: dict[int, datetime] = {}
        self._cursor = low

    def mark_busy(self, port: int, now: datetime) -> None:
        self.busy[port] = now + timedelta(seconds=BUSY_S)

    def take(self, now: datetime | None = None) -> int | None:
        if now is not None:
            self.busy = {port: until for port, until in self.busy.items() if until > now}
        size = self.high - self.low + 1
        for offset in range(size):
            port = self.low + (self._cursor - self.low + offset) % size
            if port not in self.in_use and port not in self.busy:
                self.in_use.add(port)
                self._cursor = port + 1 if port < self.high else self.low
                return port
        return None

    def hold(self, ports: Iterable[int]) -> None:
        self.in_use.update(p for p in ports if self.low <= p <= self.high)

    def release(self, ports: Iterable[int]) -> None:
        self.in_use.difference_update(ports)


def dynamic_ports(task: Task) -> list[int]:
    """The ports of a task that came from the pool (those its spec did not fix)."""
    fixed = {p.name for p in task.spec.ports if p.port is not None}
    return [port for name, port in task.ports.items() if name not in fixed]


def creation_allocation(
    spec: TaskSpec, restart_at: datetime | None, now: datetime
) -> tuple[dict[str, int], TaskStatus] | None:
    """The ports and PENDING status a task of `spec` (restarting at `restart_at`) is created with when
    the allocator would have nothing to hand out or wait for; None when it must be created NEW, for the
    allocator."""
    if restart_at is not None or spec.requires:
        return None
    if not spec.ports:
        return {}, _allocated_plain(now)
    ports: dict[str, int] = {}
    for port in spec.ports:
        if port.port is None:
            return None
        ports[port.name] = port.port
    return ports, _allocated(ports, now)


@functools.lru_cache(maxsize=1)
def _allocated_plain(now: datetime) -> TaskStatus:
    """The PENDING status of a task without ports: one object for every task created at `now` (a
    reconcile of 1,000,000 new slots made as many equal ones)."""
    return _allocated({}, now)


def _allocated(ports: dict[str, int], now: datetime) -> TaskStatus:
    """The PENDING status of a task given its ports."""
    described = ", ".join(f"{name}={port}" for name, port in ports.items())
    return TaskStatus(
        state=TaskState.PENDING, timestamp=now, message=f"allocated {described}" if described else "allocated"
    )


def allocate(
    tasks: Sequence[Task],
    pool: PortPool,
    now: datetime,
    available: Callable[[str], bool] = lambda _service: True,
) -> tuple[list[Op], list[str]]:
    """Allocate every NEW task whose restart delay is over and whose required services are
    `available` (have an endpoint); returns the ops and the ids left waiting."""
    ops: list[Op] = []
    waiting: list[str] = []
    for task in tasks:
        if task.status.state != TaskState.NEW or task.desired_state > TaskState.RUNNING:
            continue
        if task.restart_at is not None and task.restart_at > now:
            waiting.append(task.id)
            continue
        missing = [name for name in task.spec.requires if not available(name)]
        if missing:
            waiting.append(task.id)
            message = f"waiting for required services without an endpoint: {', '.join(missing)}"
            if task.status.message != message:
                status = msgspec.structs.replace(task.status, message=message)
                ops.append(Update(msgspec.structs.replace(task, status=status, updated_at=now)))
            continue
        ports: dict[str, int] = {}
        taken: list[int] = []  # from the pool, handed back if the task cannot have them all
        exhausted = False
        for spec in task.spec.ports:
            if spec.port is not None:
                ports[spec.name] = spec.port
                continue
            port = pool.take(now)
            if port is None:
                exhausted = True
                break
            ports[spec.name] = port
            taken.append(port)
        if exhausted:
            pool.release(taken)
            message = f"no free host port in {pool.low}-{pool.high}"
            if task.status.message != message:
                status = msgspec.structs.replace(task.status, message=message)
                ops.append(Update(msgspec.structs.replace(task, status=status, updated_at=now)))
            continue
        ops.append(
            Update(msgspec.structs.replace(task, ports=ports, status=_allocated(ports, now), updated_at=now))
        )
    return ops, waiting
