"""Keeps a host's local haproxy alive: restarts its master whenever `LocalHaproxy.dead_master` finds it
dead (exited, or silent on its CLI socket), backing off in a crash loop (`proxy.supervise`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from treeherd.proxy.haproxy import WATCH_INTERVAL_S, LocalHaproxy
from treeherd.proxy.master import HaproxyFailed
from treeherd.proxy.supervise import RestartPolicy, Restarts, after_death, started

__all__ = ["supervise"]

log = logging.getLogger("treeherd.proxy.haproxy")


async def supervise(
    proxy: LocalHaproxy,
    *,
    watch_interval_s: float = WATCH_INTERVAL_S,
    policy: RestartPolicy | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run until cancelled: restart the master whenever `dead_master` finds it dead, backing off
    in a crash loop; `on_restart(cause)` after each fresh start."""
    history = Restarts()
    while True:
        await proxy.wait_exit(watch_interval_s)  # an exit is seen at once
        cause = await proxy.dead_master()
        if cause is None:
            continue
        decision = after_death(history, time.monotonic(), policy)
        if decision.crash_loop:
            log.warning(
                "haproxy in %s: crash loop: %s, %d time(s) in a row soon after a restart; next start"
                " in %g s", proxy.workdir, cause, decision.quick_deaths, decision.delay_s,
            )  # fmt: skip
        with contextlib.suppress(HaproxyFailed):  # `restart` tries again and says why
            await proxy.end_master()  # nothing half-alive keeps serving during the delay
        await asyncio.sleep(decision.delay_s)
        try:
            result = await proxy.restart()
        except (HaproxyFailed, OSError) as error:
            log.warning("haproxy in %s: %s; it did not start again: %s", proxy.workdir, cause, error)
        else:
            log.warning(
                "haproxy in %s: proxy restarted: %s; new worker pid %d",
                proxy.workdir, cause, result.worker_pid,
            )  # fmt: skip
            if on_restart is not None:
                on_restart(cause)
        history = started(decision, time.monotonic())
