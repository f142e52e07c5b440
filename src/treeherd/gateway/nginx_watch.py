"""The gateway's watch on its nginx master: a master that is gone (or a zombie), or alive but no longer
acting on signals (stopped, or silent on a reload signal), has its process group ended and a fresh one
started on the current snapshot, with an event giving the cause. One that keeps dying right after its
restarts is started again only after a growing delay (`proxy.supervise`) and fires the gateway's
crash-loop alert, which resolves once the master has stayed up again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from treeherd.gateway.configurator import Configurator
from treeherd.model.gateway import Figure, GatewayEventType
from treeherd.model.routing import RoutingSnapshot
from treeherd.proxy.nginx import Nginx, NginxError
from treeherd.proxy.supervise import RestartPolicy, Restarts, after_death, started, stayed_up

__all__ = ["NginxWatch"]

log = logging.getLogger(__name__)
Record = Callable[[GatewayEventType, str, dict[str, Figure], Literal["crash_loop"] | None], Awaitable[None]]


class NginxWatch:
    """Checks the master every `interval_s` and replaces it when it is dead or hung."""

    def __init__(
        self,
        *,
        name: str,
        nginx: Nginx,
        configurator: Configurator,
        applying: asyncio.Lock,
        snapshot: Callable[[], RoutingSnapshot],
        record: Record,
        stopped: asyncio.Event,
        interval_s: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.name = name
        self.nginx = nginx
        self.configurator = configurator
        self.policy = policy or RestartPolicy()
        self._applying = applying  # shared with the renders: one start or reload at a time
        self._snapshot = snapshot
        self._record = record
        self._stopped = stopped
        self._interval_s = interval_s
        self.firing = False  # the crash-loop alert (set from the stored record at start)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    async def _end_if_hung(self, pid: int) -> bool:
        """End the live master `pid` if it no longer acts on signals; True when it was ended."""
        hung = self.nginx.unresponsive(pid, time.monotonic())
        if hung is None:
            return False
        async with self._applying:
            if self.nginx.master_pid() != pid:
                return False  # a render replaced it meanwhile
            log.warning("gateway %s: %s: ending it", self.name, hung)
            try:
                await self.nginx.end_hung(pid, hung)
            except NginxError as error:
                log.error("gateway %s: %s", self.name, error)
        return True

    async def run(self) -> None:
        """Start nginx again when its master dies or hangs: at once, or after a growing delay in a
        crash loop."""
        # The master the renders started (or adopted) before this watch began; it may be dead already,
        # and then its pid file still names it.
        seen = self.nginx.master_pid() or self.nginx.recorded_pid()
        history = Restarts()
        failed: str | None = None  # why the last start failed: the cause of a crash loop, not the old pid
        while not self._stopped.is_set():
            await self._pause(self._interval_s)
            pid = self.nginx.master_pid()
            if self._stopped.is_set():
                return
            if pid is not None and not await self._end_if_hung(pid):
                seen = pid
                if self.firing and stayed_up(history, time.monotonic(), self.policy):
                    self.firing = False
                    await self._record(
                        "alert_resolved",
                        f"the nginx master stayed up {self.policy.stable_s:g} s after its restart:"
                        " crash loop over",
                        {"stable_s": self.policy.stable_s},
                        "crash_loop",
                    )
                continue
            seen = pid or seen
            if seen is None:
                continue  # never started (no pid file): the renders start it
            async with self._applying:
                if self.nginx.master_pid() is not None:
                    continue  # a render started it meanwhile
            cause = failed or self.nginx.cause_of_death(seen)
            log.warning("gateway %s: nginx is down: %s", self.name, cause)
            decision = after_death(history, time.monotonic(), self.policy)
            if decision.crash_loop:
                reason = (
                    f"crash loop: the nginx master did not stay up {decision.quick_deaths} time(s) in a"
                    f" row after a restart ({cause}); next start in {decision.delay_s:g} s"
                )
                figures: dict[str, Figure] = {
                    "quick_deaths": decision.quick_deaths,
                    "delay_s": decision.delay_s,
                }
                await self._record("error", reason, figures, None)
                if not self.firing:
                    self.firing = True
                    await self._record("alert_firing", reason, figures, "crash_loop")
                await self._pause(decision.delay_s)
                if self._stopped.is_set():
                    return
            failed = None
            async with self._applying:
                if self.nginx.master_pid() is None:
                    why = "found by the master watch"
                    result = await self.configurator.apply(self._snapshot(), why)
                    if result.outcome == "rollback" and self.nginx.master_pid() is None:
                        failed = f"the restart failed: {result.reason.rpartition(why + ': ')[2]}"
            history = started(decision, time.monotonic())
            seen = self.nginx.master_pid() or seen
