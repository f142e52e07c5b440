"""Leader election on etcd: campaign for, watch and resign a managers' leadership (the lease-key recipe).

A candidate grants itself a lease of `ttl_s` seconds, puts `PREFIX/election/LEASE` (its
`ManagerRecord`, bound to the lease) and renews the lease every `renewal_period`; it leads once every
older key is gone (`core.election`). `lost` is set as soon as the candidate can no longer be sure its
key exists: etcd said the lease is gone, or no renewal succeeded for most of the TTL (etcd unreachable).
The key's create revision is what the leader's writes are fenced on (`EtcdStore.fence`). One connection
of its own, reconnecting to the next endpoint that answers when the current one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from treeherd.core.election import Candidate, leader_of, must_step_down, renewal_period, standing
from treeherd.model.errors import TreeherdError, Unavailable
from treeherd.model.managers import ManagerRecord
from treeherd.store import etcd_client as etcd
from treeherd.store.etcd_client import EtcdClient, EtcdUrl
from treeherd.store.etcd_layout import Layout

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3  # seconds: a killed leader is replaced within about this long
RETRY_S = 0.5  # between two attempts when etcd does not answer
WAKE_S = 1.0  # a waiting candidate reads the keys again at least this often


class Election:
    """One manager's candidacy on one etcd prefix."""

    def __init__(
        self,
        url: EtcdUrl,
        record: ManagerRecord,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.record = record
        self.ttl_s = ttl_s
        self._client = EtcdClient(url.endpoints)
        self._prefix = Layout(url.prefix).election
        self._monotonic = monotonic
        self.key: bytes | None = None
        self.lease = 0
        self.create_revision = 0
        self.lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def endpoints(self) -> str:
        """The etcd endpoints, as `HOST:PORT, ...`."""
        return ", ".join(f"{host}:{port}" for host, port in self._client.endpoints)

    async def connect(self) -> None:
        """Reach etcd; `Unavailable` naming every endpoint tried when none answers."""
        await self._client.connect()

    async def close(self) -> None:
        await self.resign()
        await self._client.close()

    async def candidates(self) -> tuple[int, list[Candidate]]:
        """The revision read and every candidate's key at it."""
        revision, kvs = await self._client.range_prefix(self._prefix)
        found = []
        for kv in kvs:
            try:
                record = msgspec.json.decode(kv.value, type=ManagerRecord)
            except msgspec.DecodeError:
                continue
            found.append(Candidate(key=kv.key, create_revision=kv.create_revision, record=record))
        return revision, found

    async def leader(self) -> ManagerRecord | None:
        _, found = await self.candidates()
        leading = leader_of(found)
        return leading.record if leading is not None else None

    async def changed(self, revision: int, timeout_s: float = WAKE_S) -> None:
        """Return when a candidate's key changes after `revision`, or after `timeout_s` at most."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async for _ in self._client.watch(self._prefix, revision + 1):
                    return

    async def campaign(self) -> tuple[bytes, int]:
        """Wait until this candidate leads; its key and the key's create revision (the fence). Keeps
        trying while etcd cannot be reached; a candidacy whose lease lapsed starts again."""
        while True:
            try:
                if self.key is None or self.lost.is_set():
                    await self._enter()
                revision, found = await self.candidates()
                assert self.key is not None
                now = standing(self.key, found)
                if now == "leader":
                    return self.key, self.create_revision
                if now == "lost":
                    self.lost.set()
                    continue
                await self.changed(revision)
            except TreeherdError as error:
                log.warning("election on etcd: %s; retrying", error)
                await asyncio.sleep(RETRY_S)
                with contextlib.suppress(TreeherdError):
                    await self._client.connect()

    async def _enter(self) -> None:
        """A new lease and key (the old ones, if any, revoked or left to lapse)."""
        await self.resign()
        lease = await self._client.lease_grant(self.ttl_s)
        key = self._prefix + f"{lease:x}".encode()
        sent = self._monotonic()
        response = await self._client.txn(
            [etcd.compare(key, "create", 0)],
            [etcd.put(key, msgspec.json.encode(self.record), lease=lease)],
        )
        if not response.succeeded:
            raise Unavailable(f"the election key {key.decode()} already exists")
        self.key, self.lease, self.create_revision = key, lease, response.header.revision
        self.lost = asyncio.Event()
        self._renewer = asyncio.create_task(self._renew(lease, sent), name="election-renewal")

    async def _renew(self, lease: int, last_sent: float) -> None:
        """Renew the lease until it is gone or cannot be renewed in time; then set `lost`. After a
        failed renewal it tries again soon (on the next endpoint that answers) rather than a period later."""
        period = renewal_period(self.ttl_s)
        wait = period
        try:
            while True:
                await asyncio.sleep(wait)
                sent = self._monotonic()
                try:
                    async with asyncio.timeout(period):
                        ttls = await self._client.lease_keepalive([lease])
                except (TreeherdError, TimeoutError) as error:
                    if must_step_down(last_sent, self._monotonic(), self.ttl_s):
                        log.warning("leadership lease not renewed in time (%s)", error)
                        return
                    with contextlib.suppress(TreeherdError, TimeoutError):
                        async with asyncio.timeout(period):
                            await self._client.connect()
                    wait = RETRY_S / 2
                    continue
                if ttls.get(lease, 0) <= 0:
                    log.warning("leadership lease %x is gone from etcd", lease)
                    return
                last_sent, wait = sent, period
        finally:
            self.lost.set()

    async def resign(self) -> None:
        """Give up the candidacy: stop renewing and revoke the lease (its key goes with it)."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        lease, self.key, self.lease = self.lease, None, 0
        self.lost.set()
        if lease:
            with contextlib.suppress(TreeherdError, TimeoutError):
                async with asyncio.timeout(self.ttl_s):
                    await self._client.lease_revoke(lease)
