"""The endpoint registry: registrations in the store, their TTL leases in memory, expiry.

A lease is what etcd's lessor keeps: a deadline per registration, renewed by its owner without a
store write (agents renew every 10 s, external registrants as often as they like), and the
registration deleted when the deadline passes. Leases are not durable: a manager that starts gives
every stored registration a full TTL, as etcd does after a leader change, so a restart never drops a
live endpoint and a dead one is gone one TTL later. Decisions are in `core.edge.discovery`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from treeherd.core.edge.discovery import plan_agent_endpoints, plan_deregister, plan_expire, plan_register
from treeherd.core.tasks.dispatch import cluster_settings
from treeherd.core.view import View
from treeherd.manager.commits import commit_plan
from treeherd.model.discovery import DEFAULT_TTL_S, Endpoint
from treeherd.model.errors import NotFound
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.wire import TaskEndpoint
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Store

__all__ = ["Registry"]

log = logging.getLogger(__name__)

TICK_S = 0.25  # how late past its deadline an expired registration may be deleted


class Registry:
    """Owns endpoint registrations. `agent_endpoints`, `register` and `deregister` may be called
    before `run()` starts the expiry loop (leases then start at once)."""

    name = "registry"

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        ids: Callable[[], str] = new_id,
    ) -> None:
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._ids = ids
        self._leases: dict[str, float] = {}
        self._loaded = False
        self._stopping = asyncio.Event()

    def expires_in(self, endpoint_id: str) -> float | None:
        """Seconds until a registration's lease runs out (None: not leased)."""
        due = self._leases.get(endpoint_id)
        return None if due is None else max(0.0, due - self._monotonic())

    # ---- the component -----------------------------------------------------------------------------
    async def run(self) -> None:
        self._load()
        while not self._stopping.is_set():
            await self._sleep(TICK_S)
            await self._expire()

    def stop(self) -> None:
        self._stopping.set()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        now = self._monotonic()
        for endpoint in self._store.view().all(Endpoint):
            self._leases.setdefault(endpoint.id, now + endpoint.ttl_s)

    async def _expire(self) -> None:
        now = self._monotonic()
        expired = [endpoint_id for endpoint_id, due in self._leases.items() if due <= now]
        if not expired:
            return
        view = self._store.view()
        versions = []
        for endpoint_id in expired:
            found = view.get(Endpoint, endpoint_id)
            if found is None:
                self._leases.pop(endpoint_id, None)
            else:
                versions.append((endpoint_id, found.version))
                log.info("endpoint %s:%d of %s expired", found.address, found.port, found.service)
        if versions:
            await self._commit(lambda v: plan_expire(v, versions))

    # ---- writes ------------------------------------------------------------------------------------
    async def agent_endpoints(self, machine_id: str, endpoints: Sequence[TaskEndpoint]) -> None:
        """The agent of `machine_id` says these of its tasks are endpoints now."""
        self._load()
        held: list[str] = []
        ttl = [DEFAULT_TTL_S]

        def plan(view: View) -> list[Op]:
            machine = view.get(Machine, machine_id)
            if machine is None or machine.agent is None:
                return []
            current = [e for e in view.where(Endpoint, "machine", machine_id) if e.source == "task"]
            ttl[0] = cluster_settings(view).endpoint_ttl_s
            ops, ids = plan_agent_endpoints(
                view,
                machine,
                endpoints,
                current,
                address=machine.agent.address or "127.0.0.1",
                ttl_s=ttl[0],
                now=self._clock(),
                new_id=self._ids,
            )
            held[:] = ids
            return ops

        await self._commit(plan)
        due = self._monotonic() + ttl[0]
        for endpoint_id in held:
            self._leases[endpoint_id] = due

    async def register(
        self, service: str, address: str, port: int, *, ttl_s: float, weight: int = 1, host: str = ""
    ) -> Endpoint:
        """Register or refresh an external endpoint; returns it as stored."""
        self._load()
        ids: list[str] = []

        def plan(view: View) -> list[Op]:
            ops, endpoint_id = plan_register(
                view,
                service,
                address,
                port,
                ttl_s=ttl_s,
                weight=weight,
                host=host,
                now=self._clock(),
                new_id=self._ids,
            )
            ids[:] = [endpoint_id]
            return ops

        await self._commit(plan)
        self._leases[ids[0]] = self._monotonic() + ttl_s
        found = self._store.view().get(Endpoint, ids[0])
        if found is None:  # expired and deleted in between: vanishingly rare; say so
            raise NotFound(f"the registration of {address}:{port} was removed meanwhile: register again")
        return found

    async def deregister(self, service: str, address: str, port: int) -> None:
        self._load()
        await self._commit(lambda view: plan_deregister(view, service, address, port))

    async def _commit(self, plan: Callable[[View], list[Op]]) -> None:
        """Commit the plan (`commit_plan`: made again after a lost race), then keep the lease table in
        step with what was written."""
        written: list[Op] = []

        def planned(view: View) -> list[Op]:
            written[:] = plan(view)
            return written

        await commit_plan(self._store, planned)
        for op in written:
            endpoint = op.object
            if not isinstance(endpoint, Endpoint):
                continue
            if isinstance(op, Delete):
                self._leases.pop(endpoint.id, None)
            elif isinstance(op, (Create, Update)) and endpoint.id not in self._leases:
                self._leases[endpoint.id] = self._monotonic() + endpoint.ttl_s
