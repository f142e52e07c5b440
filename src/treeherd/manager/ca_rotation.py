"""Drives a root CA rotation to its end: asks connected nodes to renew, then retires the old root.

While the cluster authority (manager.cluster_ca) has a rotation under way, this component asks every
connected node whose certificate is still from the old root to renew at once, on its open session
(asked again every few seconds, so nodes that reconnect or a manager restarted mid-rotation are
covered). When every admitted node (a machine with a node identity; removed nodes were revoked)
holds a certificate from the new root, or the rotation's deadline has passed, it retires the old
root, naming in the log the nodes that had not renewed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.inventory import Inventory

log = logging.getLogger(__name__)
audit = logging.getLogger("treeherd.audit")

# Asks the sessions of nodes not in the given set to renew now; how many were asked.
AskRenewals = Callable[[set[str]], int]


def admitted_nodes(inventory: Inventory) -> list[str]:
    """The node ids of the cluster's machines that joined with a certificate."""
    return sorted(m.node_identity for m in inventory.machines() if m.node_identity)


class RotationDriver:
    """Moves the authority's rotation along every `period_s` seconds; nothing to do when none is under way."""

    name = "ca-rotation"

    def __init__(
        self,
        authority: ClusterAuthority,
        inventory: Inventory,
        ask: AskRenewals | None,
        *,
        clock: Callable[[], datetime],
        roots_changed: Callable[[], None] | None = None,
        period_s: float = 2.0,
    ) -> None:
        self._authority = authority
        self._inventory = inventory
        self._ask = ask
        self._clock = clock
        self._period_s = period_s
        self._roots_changed = roots_changed
        self._roots = authority.trust_bundle()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Look now (a rotation was just begun)."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception as error:  # the store may be away for a while; try again later
                log.warning("root rotation step failed: %s", error)
            waker = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait(
                    {waker, stopper}, timeout=self._period_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waker.cancel()
                stopper.cancel()
            self._wake.clear()

    def step(self) -> None:
        self._watch_roots()
        rotation = self._authority.rotation
        if rotation is None:
            return
        nodes = admitted_nodes(self._inventory)
        if self._authority.should_retire(nodes, self._clock()):
            status = self._authority.status(nodes)
            self._authority.retire_old_root()
            if status.pending:
                audit.warning(
                    "root CA rotation ended at its deadline; nodes still on the old root must join again: %s",
                    ", ".join(status.pending),
                )
            else:
                audit.info("root CA rotation finished: all %d node(s) renewed", len(status.done))
            self._watch_roots()
            return
        if self._ask is not None:
            self._ask(set(rotation.renewed))

    def _watch_roots(self) -> None:
        roots = self._authority.trust_bundle()
        if roots != self._roots:
            self._roots = roots
            if self._roots_changed is not None:
                self._roots_changed()

    def stop(self) -> None:
        self._stopping.set()
