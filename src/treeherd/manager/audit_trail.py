"""Refusals into the event stream: every refused authentication or authorisation (a missing or wrong
token, a role that may not, a refused join, a refused agent session) is logged to `treeherd.audit` at
once and recorded in the store's audit log (`core.security.audit`), whose updates are events of
`/api/v1/events` (kind `audit`).

Recording is a component: `refused()` never blocks or fails the request path, and a flood of refused
requests costs at most one store write per `flush_s` (refusals beyond `max_pending` between two writes
are counted, not kept). The reason and the caller never hold a secret: the callers pass what was
asked and why, a token's name at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from treeherd.core.security.audit import plan_record_refusals
from treeherd.manager.inventory import Inventory
from treeherd.model.security import Refusal

audit = logging.getLogger("treeherd.audit")
log = logging.getLogger(__name__)

RefusalSink = Callable[..., None]


class AuditTrail:
    """Keeps refusals until the next write of the audit log."""

    name = "audit-trail"

    def __init__(self, inventory: Inventory, *, flush_s: float = 0.5, max_pending: int = 1000) -> None:
        self._inventory = inventory
        self._clock: Callable[[], datetime] = inventory.clock
        self._flush_s = flush_s
        self._max_pending = max_pending
        self._pending: list[Refusal] = []
        self._dropped = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def refused(self, *, address: str, what: str, reason: str, caller: str | None = None) -> None:
        """Record one refusal (from the event loop's thread; returns at once)."""
        audit.warning("refused %s from %s%s: %s", what, address, f" ({caller})" if caller else "", reason)
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
        else:
            self._pending.append(
                Refusal(at=self._clock(), address=address, what=what, reason=reason, caller=caller)
            )
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            waker = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
                stopper.cancel()
            self._wake.clear()
            await self.flush()
            if not self._stopping.is_set():
                await asyncio.sleep(self._flush_s)
        await self.flush()

    async def flush(self) -> None:
        refusals, dropped = self._pending, self._dropped
        self._pending, self._dropped = [], 0
        if not refusals and not dropped:
            return
        try:
            await self._inventory.apply(
                lambda view: plan_record_refusals(view, refusals, dropped, self._clock(), self._inventory.ids)
            )
        except Exception as error:  # the log line above stays; the store may be down for a while
            log.warning("could not record %d refusal(s) in the audit log: %s", len(refusals), error)

    def stop(self) -> None:
        self._stopping.set()
