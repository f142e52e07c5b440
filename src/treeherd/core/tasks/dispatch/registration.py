"""Registration: how often a hostname may register, and the machine record a registration leads to.

A hostname registers at most `registration_limit` times per `registration_window_s` (refusals do not
count, so an agent that waits `retry_after_s` gets in); `now` comes in as monotonic seconds for the
limit and as a datetime for the timestamps written to the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime

import msgspec

from treeherd.core.tree import validate
from treeherd.core.view import View
from treeherd.model.errors import Forbidden
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Op, Update
from treeherd.model.security import RevokedNode
from treeherd.model.wire import Register


class RegistrationLimiter:
    """At most `limit` registrations per key within a sliding window of `window_s` seconds."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float, *, limit: int, window_s: float) -> float | None:
        """Record a registration and return None, or return how many seconds to wait before the next
        one is admitted (refusals are not recorded). `limit <= 0` admits everything."""
        if limit <= 0:
            return None
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - window_s:
            times.popleft()
        if len(times) >= limit:
            return max(times[0] + window_s - now, 0.0)
        times.append(now)
        return None

    def prune(self, now: float, window_s: float) -> None:
        """Forget keys whose registrations all left the window."""
        for key in [k for k, times in self._seen.items() if not times or times[-1] <= now - window_s]:
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


def check_identity(view: View, hostname: str, machine: Machine | None, identity: str | None) -> None:
    """Refuse a session whose certificate (node id `identity`, None without one) is not the one
    `hostname` is bound to, or is bound to another hostname."""
    bound = machine.node_identity if machine is not None else None
    if identity is None:
        if bound is not None:
            raise Forbidden(f"{hostname} is bound to a node certificate: its agent must connect with it")
        return
    revoked = view.lookup(RevokedNode, "node_identity", identity)
    if revoked is not None:
        raise Forbidden(
            f"this node's certificate was revoked when {revoked.hostname} was removed: join again with a join token"
        )
    owner = view.lookup(Machine, "node_identity", identity)
    if owner is not None and owner.hostname != hostname:
        raise Forbidden(
            f"this node's certificate belongs to {owner.hostname}: it cannot open a session for {hostname}"
        )
    if bound is not None and bound != identity:
        raise Forbidden(
            f"{hostname} is bound to another node's certificate: this one cannot open its session"
        )


def plan_register(
    view: View,
    register: Register,
    *,
    address: str,
    now: datetime,
    new_id: Callable[[], str],
    identity: str | None = None,
) -> tuple[list[Op], str]:
    """The machine record an agent's registration leads to, and the machine's id.

    A new hostname creates the machine with everything the agent reports (its labels included). A
    known one takes the agent's ips, cpus and memory (an empty or zero report keeps the stored value)
    and keeps what operators own: labels, machine kind (bindings never mix kinds), role, availability.
    Raises InvalidInput for a malformed report.
    """
    hostname = validate.hostname(register.hostname)
    ips = validate.ip_list(register.ips)
    validate.non_negative(register.cpus, field="cpus")
    validate.non_negative(register.memory_bytes, field="memory_bytes")
    machine = view.lookup(Machine, "hostname", hostname)
    check_identity(view, hostname, machine, identity)
    if machine is None:
        validate.labels(register.labels)
        agent = AgentStatus(
            state="ready", address=address, version=register.version, since=now, limits=register.limits
        )
        created = Machine(
            id=new_id(),
            created_at=now,
            updated_at=now,
            hostname=hostname,
            ips=ips,
            machine_kind=register.machine_kind,
            labels=dict(sorted(register.labels.items())),
            cpus=register.cpus,
            memory_bytes=register.memory_bytes,
            agent=agent,
            node_identity=identity,
        )
        return [Create(created)], created.id
    previous = machine.agent
    since = previous.since if previous is not None and previous.state == "ready" else None
    agent = AgentStatus(
        state="ready",
        address=address,
        version=register.version,
        since=since or now,
        limits=register.limits,
    )
    updated = msgspec.structs.replace(
        machine,
        ips=ips or machine.ips,
        cpus=register.cpus or machine.cpus,
        memory_bytes=register.memory_bytes or machine.memory_bytes,
        agent=agent,
        node_identity=identity or machine.node_identity,
        updated_at=now,
    )
    return [Update(updated)], machine.id
