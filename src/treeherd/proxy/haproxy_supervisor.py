"""Keeps a host's local haproxy alive: restarts its master whenever `LocalHaproxy.dead_master` finds it
dead (exited, or silent on its CLI socket), backing off in a crash loop (`proxy.supervise`), and says
what happened through `on_event`: each restart with its cause, each failed restart, and the crash-loop
alert, fired at the first quick death and resolved once the master has stayed up again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from treeherd.model.gateway import Figure
from treeherd.model.proxies import ProxyEventType
from treeherd.proxy.haproxy import WATCH_INTERVAL_S, LocalHaproxy
from treeherd.proxy.master import HaproxyFailed
from treeherd.proxy.supervise import RestartPolicy, Restarts, after_death, started, stayed_up

__all__ = ["ProxyEventSink", "supervise"]

log = logging.getLogger("treeherd.proxy.haproxy")
ProxyEventSink = Callable[[ProxyEventType, str, dict[str, Figure]], None]


async def supervise(
    proxy: LocalHaproxy,
    *,
    watch_interval_s: float = WATCH_INTERVAL_S,
    policy: RestartPolicy | None = None,
    on_restart: Callable[[str], None] | None = None,
    on_event: ProxyEventSink | None = None,
) -> None:
    """Run until cancelled: restart the master whenever `dead_master` finds it dead, backing off
    in a crash loop; `on_restart(cause)` after each fresh start; `on_event(type, reason, figures)`
    for each restart, failed restart and crash-loop alert change."""
    rules = policy or RestartPolicy()
    history = Restarts()
    # Unknown at first: an earlier owner may have left the alert firing; resolved (a no-op for the
    # manager when none fires) once the master has stayed up.
    firing: bool | None = None
    up_since = time.monotonic()

    def event(type: ProxyEventType, reason: str, figures: dict[str, Figure]) -> None:
        if on_event is not None:
            on_event(type, reason, figures)

    while True:
        await proxy.wait_exit(watch_interval_s)  # an exit is seen at once
        cause = await proxy.dead_master()
        if cause is None:
            now = time.monotonic()
            stable = (
                stayed_up(history, now, rules) if history.started_at else now - up_since >= rules.stable_s
            )
            if firing is not False and stable:
                reason = (
                    f"the haproxy master stayed up {rules.stable_s:g} s after its restart: crash loop over"
                )
                if firing:
                    log.warning("haproxy in %s: %s", proxy.workdir, reason)
                firing = False
                event("alert_resolved", reason, {"stable_s": rules.stable_s})
            continue
        decision = after_death(history, time.monotonic(), rules)
        if decision.crash_loop:
            reason = (
                f"crash loop: the haproxy master did not stay up {decision.quick_deaths} time(s) in a row"
                f" after a restart ({cause}); next start in {decision.delay_s:g} s"
            )
            log.warning("haproxy in %s: %s", proxy.workdir, reason)
            if not firing:
                firing = True
                event(
                    "alert_firing",
                    reason,
                    {"quick_deaths": decision.quick_deaths, "delay_s": decision.delay_s},
                )
        with contextlib.suppress(HaproxyFailed):  # `restart` tries again and says why
            await proxy.end_master()  # nothing half-alive keeps serving during the delay
        await asyncio.sleep(decision.delay_s)
        try:
            result = await proxy.restart()
        except (HaproxyFailed, OSError) as error:
            log.warning("haproxy in %s: %s; it did not start again: %s", proxy.workdir, cause, error)
            event("error", f"{cause}; haproxy did not start again: {error}", {})
        else:
            log.warning(
                "haproxy in %s: proxy restarted: %s; new worker pid %d",
                proxy.workdir, cause, result.worker_pid,
            )  # fmt: skip
            event("restarted", f"proxy restarted: {cause}", {"worker_pid": result.worker_pid})
            if on_restart is not None:
                on_restart(cause)
        history = started(decision, time.monotonic())
