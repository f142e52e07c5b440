"""The edge gateway component: keeps one nginx in step with the service tree and watches what it serves.

`run()` takes a snapshot from the manager, starts (or adopts) nginx on it, then follows the event
stream. Changes are coalesced: a render waits until the stream has been quiet for `min_wait_s`, but
never more than `max_wait_s` after the first change, so a burst of edits costs one reload. Beside it,
the health loop tails the access logs every `health_interval_s`, reports availability, evaluates
alerts and ejections. nginx outlives the gateway on purpose: a restarted gateway adopts it. A third
loop (`gateway.nginx_watch`) watches the master every `watch_interval_s`: a master that is gone, or
no longer acts on signals, has what is left of it ended and a fresh one started on the current
snapshot, with an event giving the cause; one that keeps dying right after its restarts is started
again only after a growing delay and fires the crash-loop alert until it stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Literal

import msgspec

from treeherd.gateway.configurator import Configurator
from treeherd.gateway.health import HealthMonitor, HealthOptions, wall_clock
from treeherd.gateway.manager_link import ManagerLink, Resync
from treeherd.gateway.mirror import SnapshotMirror
from treeherd.gateway.nginx_watch import NginxWatch
from treeherd.model.events import Event
from treeherd.model.gateway import BackendState, Figure, GatewayEventType
from treeherd.model.gateway_requests import BackendUpdate
from treeherd.model.routing import RoutingSnapshot
from treeherd.proxy.nginx import Nginx
from treeherd.render.nginx import RenderOptions
from treeherd.transport.client import ClientError

log = logging.getLogger(__name__)
SNAPSHOT_RETRY_S = 1.0


class LocalChange:
    """Put on the change queue when the gateway itself changed the mirror (an ejection)."""


class GatewayOptions(msgspec.Struct, frozen=True, kw_only=True):
    manager_url: str
    prefix: Path
    name: str = "edge"
    binary: str = "nginx"
    log_dir: Path | None = None
    listen_host: str | None = None
    min_wait_s: float = 0.2
    max_wait_s: float = 2.0
    health_interval_s: float = 1.0
    report_interval_s: float = 2.0
    probe_interval_s: float = 2.0
    probes_needed: int = 3
    watch_interval_s: float = 0.2

    @property
    def logs(self) -> Path:
        return self.log_dir or self.prefix / "logs"


class Gateway:
    """One nginx prefix driven from one manager."""

    name = "gateway"

    def __init__(self, options: GatewayOptions, *, link: ManagerLink | None = None) -> None:
        self.options = options
        self.link = link or ManagerLink(options.manager_url, options.name)
        self.nginx = Nginx(options.binary, options.prefix)
        self.configurator = Configurator(
            self.nginx,
            RenderOptions(log_dir=str(options.logs), listen_host=options.listen_host),
            self._record_config,
        )
        self.health: HealthMonitor | None = None
        self.mirror: SnapshotMirror | None = None
        self._queue: asyncio.Queue[Event | Resync | LocalChange] = asyncio.Queue()
        self._stopped = asyncio.Event()
        self._applying = asyncio.Lock()

    async def _record_config(
        self, type: GatewayEventType, reason: str, figures: dict[str, Figure], digest: str | None
    ) -> None:
        await self.link.record(type, reason, figures, config_sha256=digest)

    async def _record(self, type: GatewayEventType, reason: str, figures: dict[str, Figure]) -> None:
        await self.link.record(type, reason, figures)

    async def _set_backend(self, path: str, hostname: str, update: BackendUpdate) -> BackendState | None:
        """Write an ejection or restoration; the stored state goes into the mirror at once, so the next
        decision already sees it (the stream's copy of the same version is then a no-op)."""
        try:
            stored = await self.link.set_backend(path, hostname, update)
        except ClientError as error:
            log.warning("could not record the backend state of %s on %s: %s", hostname, path, error)
            return None
        if self.mirror is not None and self.mirror.apply(
            Event(revision=stored.version, type="updated", object=stored)
        ):
            self._queue.put_nowait(LocalChange())  # rendered by the change loop, after the event is recorded
        return stored

    async def _snapshot(self) -> RoutingSnapshot | None:
        """The manager's snapshot, retried until it answers or the gateway stops."""
        while not self._stopped.is_set():
            try:
                return await self.link.snapshot()
            except ClientError as error:
                log.warning("gateway %s: %s; retrying", self.options.name, error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNAPSHOT_RETRY_S):
                    await self._stopped.wait()
        return None

    async def _render(self, why: str) -> None:
        assert self.mirror is not None
        async with self._applying:  # the change loop and the health loop both render
            await self.configurator.apply(self.mirror.snapshot(), why)

    async def run(self) -> None:
        self.configurator.prepare()
        self.health = HealthMonitor(
            gateway=self.options.name,
            state_path=self.options.prefix / "health-state.json",
            log_dir=self.options.logs,
            record=self._record,
            set_backend=self._set_backend,
            options=HealthOptions(
                probe_interval_s=self.options.probe_interval_s, probes_needed=self.options.probes_needed
            ),
        )
        try:
            snapshot = await self._snapshot()
            if snapshot is None:
                return
            self.mirror = SnapshotMirror(snapshot)
            adopted = self.nginx.master_pid()
            await self._record(
                "started",
                f"gateway {self.options.name} on {self.options.prefix}"
                + (f", adopting nginx pid {adopted}" if adopted else ", starting nginx"),
                {"revision": snapshot.revision},
            )
            await self._render(f"start at revision {snapshot.revision}")
            self.link.follow(snapshot.revision, asyncio.get_running_loop(), self._queue)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_changes())
                group.create_task(self._watch_health())
                group.create_task(self._watch_nginx())
        finally:
            self.link.stop()
            self.health.close()

    async def _next(self, wait_s: float | None) -> Event | Resync | LocalChange | None:
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(self._stopped.wait())
        done, pending = await asyncio.wait(
            {getter, stopper}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if getter in done:
            return getter.result()
        return None

    async def _follow_changes(self) -> None:
        while not self._stopped.is_set():
            item = await self._next(None)
            if item is None:
                continue
            assert self.mirror is not None
            first = time.monotonic()
            quiet_until = first + self.options.min_wait_s
            dirty = False
            resync = False
            while True:
                if isinstance(item, Resync):
                    resync = True
                elif isinstance(item, LocalChange):
                    dirty = True
                elif self.mirror.apply(item):
                    dirty = True
                    quiet_until = time.monotonic() + self.options.min_wait_s
                remaining = min(quiet_until, first + self.options.max_wait_s) - time.monotonic()
                if remaining <= 0 or self._stopped.is_set():
                    break
                next_item = await self._next(remaining)
                if next_item is None:
                    break
                item = next_item
            if resync:
                snapshot = await self._snapshot()
                if snapshot is None:
                    return
                self.mirror = SnapshotMirror(snapshot)
                self.link.follow(snapshot.revision, asyncio.get_running_loop(), self._queue)
                dirty = True
            if dirty and not self._stopped.is_set():
                await self._render(f"changes up to revision {self.mirror.revision}")

    async def _watch_health(self) -> None:
        assert self.health is not None
        last_report = 0.0
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.health_interval_s):
                    await self._stopped.wait()
            if self._stopped.is_set() or self.mirror is None:
                return
            now = wall_clock()
            snapshot = self.mirror.snapshot()
            await asyncio.to_thread(self.health.read_logs, snapshot, now)
            await self.health.evaluate_alerts(snapshot, now)
            await self.health.evaluate_ejections(self.mirror.snapshot(), now)
            if time.monotonic() - last_report >= self.options.report_interval_s:
                last_report = time.monotonic()
                try:
                    await self.link.report(self.health.report(self.mirror.snapshot(), now))
                except ClientError as error:
                    log.warning("could not report availability: %s", error)

    async def _watch_nginx(self) -> None:
        assert self.mirror is not None
        mirror = self.mirror
        watch = NginxWatch(
            name=self.options.name,
            nginx=self.nginx,
            configurator=self.configurator,
            applying=self._applying,
            snapshot=lambda: (self.mirror or mirror).snapshot(),
            record=self._record_alert,
            stopped=self._stopped,
            interval_s=self.options.watch_interval_s,
        )
        watch.firing = await self.link.crash_loop_firing()  # a crash loop an earlier run left firing
        await watch.run()

    async def _record_alert(
        self,
        type: GatewayEventType,
        reason: str,
        figures: dict[str, Figure],
        alert: Literal["crash_loop"] | None,
    ) -> None:
        await self.link.record(type, reason, figures, alert=alert)

    def stop(self) -> None:
        self._stopped.set()
        self.link.stop()
