"""Keeps the `/services/<service>/<ip>:<port>` keys in etcd in step with the endpoint registrations
(a manager on the etcd store only): what `etcdctl get --prefix /services/`, confd and the seed's
secretary-era tools read.

Every `TICK_S` it compares the registrations (and their deadlines, from the registry's leases) with the
keys it holds (`core.edge.registry_keys.plan_keys`) and applies the plan: new keys each with a new lease
of the registration's TTL, renewals of refreshed ones, revocations of gone ones. When etcd cannot be
reached it forgets what it held and, once etcd answers again, puts every key again with new leases
(the old leases lapse by themselves). It revokes nothing when it stops: registrations outlive a manager
restart, and without a manager to renew them the keys expire in etcd one TTL later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import msgspec

from treeherd.core.edge.registry_keys import KeyState, plan_keys, wanted_keys
from treeherd.manager.endpoints import Registry
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import TreeherdError
from treeherd.store import etcd_client as etcd
from treeherd.store.base import Store
from treeherd.store.etcd_client import EtcdClient

log = logging.getLogger(__name__)

TICK_S = 0.5
BATCH = 64  # leases granted at once, and keys put per etcd transaction


class _Held(msgspec.Struct, kw_only=True):
    state: KeyState
    lease: int


class RegistryKeys:
    """The component; `endpoints` are etcd's client endpoints (`HOST`, `PORT`)."""

    name = "registry-keys"

    def __init__(
        self,
        store: Store,
        registry: Registry,
        endpoints: Sequence[tuple[str, int]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._registry = registry
        self._client = EtcdClient(endpoints)
        self._monotonic = monotonic
        self._held: dict[str, _Held] = {}
        self._connected = False
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        said = False
        try:
            while not self._stopping.is_set():
                try:
                    if not self._connected:
                        await self._client.connect()
                        self._connected = True
                        if said:
                            log.warning("registration keys: etcd answers again; putting them back")
                            said = False
                    await self._sync()
                except TreeherdError as error:
                    if not said:
                        log.warning("registration keys in etcd are not kept up to date: %s", error)
                        said = True
                    self._connected = False
                    self._held.clear()  # their leases may lapse meanwhile: put every key again
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_S):
                        await self._stopping.wait()
        finally:
            await self._client.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _sync(self) -> None:
        now = self._monotonic()
        registrations = []
        for endpoint in self._store.view().all(Endpoint):
            left = self._registry.expires_in(endpoint.id)
            registrations.append((endpoint, now + (endpoint.ttl_s if left is None else left)))
        wanted = wanted_keys(registrations)
        plan = plan_keys(wanted, {key: held.state for key, held in self._held.items()})
        for start in range(0, len(plan.drop), BATCH):
            chunk = plan.drop[start : start + BATCH]
            await asyncio.gather(*(self._client.lease_revoke(self._held[key].lease) for key in chunk))
            for key in chunk:
                del self._held[key]
        if plan.renew:
            ttls = await self._client.lease_keepalive([self._held[key].lease for key in plan.renew])
            lapsed = []
            for key in plan.renew:
                if ttls[self._held[key].lease] > 0:
                    self._held[key].state = wanted[key]
                else:  # etcd let it expire (it was unreachable for longer than the TTL): put it again
                    lapsed.append(key)
            await self._put(lapsed, wanted)
        await self._put(plan.put, wanted)

    async def _put(self, keys: list[str], wanted: dict[str, KeyState]) -> None:
        for start in range(0, len(keys), BATCH):
            chunk = keys[start : start + BATCH]
            leases = await asyncio.gather(*(self._client.lease_grant(wanted[key].ttl_s) for key in chunk))
            await self._client.txn(
                [],
                [
                    etcd.put(key.encode(), wanted[key].value, lease)
                    for key, lease in zip(chunk, leases, strict=True)
                ],
            )
            replaced = [self._held[key].lease for key in chunk if key in self._held]
            for key, lease in zip(chunk, leases, strict=True):
                self._held[key] = _Held(state=wanted[key], lease=lease)
            # The key moved to its new lease: the old one holds nothing now.
            await asyncio.gather(*(self._client.lease_revoke(lease) for lease in replaced))
