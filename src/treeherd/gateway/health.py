"""The gateway's health loop (N5, N6): tail the JSON access logs into sliding windows, report
availability to the manager, fire and resolve alerts (with webhooks), eject failing backends and probe
ejected ones back in.

The log positions and the windows are saved together in one file, replaced atomically after every
poll that read something, so a restart neither loses nor double-counts a line. Decisions are the
core's (`alert_change`, `decide_ejections`); this module measures, probes and applies.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from treeherd.core.edge.availability import (
    AvailabilityBook,
    alert_change,
    backend_key,
    parse_access_line,
    service_key,
    stats_of,
)
from treeherd.core.edge.canary_windows import CANARY_WINDOW, canary_windows
from treeherd.core.edge.ejection import BackendHealth, EjectionRule, decide_ejections
from treeherd.core.edge.routing import SnapshotIndex, location_order, policy_for, routing_table
from treeherd.gateway.logtail import LogTailer, PathPosition
from treeherd.gateway.probes import post_webhook, probe
from treeherd.model.availability import AvailabilityReport, BackendAvailability, ServiceAvailability
from treeherd.model.gateway import WINDOW_SECONDS, BackendState, Figure, GatewayEventType
from treeherd.model.gateway_requests import BackendUpdate
from treeherd.model.routing import RoutingSnapshot, Upstream
from treeherd.render.nginx import DEFAULT_ACCESS_LOG

log = logging.getLogger(__name__)
Record = Callable[[GatewayEventType, str, dict[str, Figure]], Awaitable[None]]
SetBackend = Callable[[str, str, BackendUpdate], Awaitable[BackendState | None]]


class HealthOptions(msgspec.Struct, frozen=True, kw_only=True):
    probe_interval_s: float = 2.0
    probes_needed: int = 3


class SavedHealth(msgspec.Struct, kw_only=True):
    """What survives a gateway restart: where each log was read up to, and the windows it fed."""

    positions: dict[str, PathPosition] = {}
    book: AvailabilityBook = msgspec.field(default_factory=AvailabilityBook)


class HealthMonitor:
    """Availability, alerts and ejection for the nodes one gateway serves."""

    def __init__(
        self,
        *,
        gateway: str,
        state_path: Path,
        log_dir: Path,
        record: Record,
        set_backend: SetBackend,
        options: HealthOptions | None = None,
    ) -> None:
        self.gateway = gateway
        self.state_path = state_path
        self.log_dir = log_dir
        self.options = options or HealthOptions()
        self._record = record
        self._set_backend = set_backend
        saved = self._load()
        self.book = saved.book
        self.tailer = LogTailer(saved.positions)
        self.firing: dict[str, str] = {}
        self._probe_ok: dict[tuple[str, str], int] = {}
        self._last_probe = 0.0

    def _load(self) -> SavedHealth:
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=SavedHealth)
        except FileNotFoundError:
            return SavedHealth()
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning(
                "ignoring unreadable health state %s (%s): starting from the logs' start",
                self.state_path,
                error,
            )
            return SavedHealth()

    def _save(self) -> None:
        data = msgspec.json.encode(SavedHealth(positions=self.tailer.positions(), book=self.book))
        temporary = self.state_path.with_name(f".{self.state_path.name}.tmp")
        # 0600: the state names the backends and their traffic; only the gateway's user reads it.
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.state_path)

    def _log_path(self, path: str) -> str:
        return path if path.startswith("/") else str(self.log_dir / path)

    def read_logs(self, snapshot: RoutingSnapshot, now: float) -> int:
        """Take every new access-log line into the windows; returns how many records were read."""
        table = routing_table(snapshot)
        paths = {self._log_path(s.access_log_path) for s in table.servers}
        if table.default_ports:
            paths.add(self._log_path(DEFAULT_ACCESS_LOG))
        self.tailer.follow(paths)
        records = [r for line in self.tailer.poll() if (r := parse_access_line(line)) is not None]
        count = self.book.record_all(records)
        self.book.prune(now)
        if count:
            self._save()
        return count

    def report(self, snapshot: RoutingSnapshot, now: float) -> AvailabilityReport:
        table = routing_table(snapshot)
        canary = canary_windows(snapshot, now)
        services = []
        for upstream in sorted(table.upstreams, key=lambda u: u.path):
            services.append(self._service(upstream, now, canary))
        return AvailabilityReport(
            gateway=self.gateway, at=datetime.fromtimestamp(now, UTC), services=services
        )

    def _backend(
        self, key: str, address: str, now: float, windows: dict[str, float], **fields: str
    ) -> BackendAvailability:
        counts = {name: self.book.window(key, now, seconds) for name, seconds in windows.items()}
        return BackendAvailability(
            address=address,
            windows={name: stats_of(*figures) for name, figures in counts.items()},
            histograms={name: figures[2] for name, figures in counts.items()},
            **fields,
        )

    def _service(self, upstream: Upstream, now: float, canary: dict[str, float]) -> ServiceAvailability:
        windows = {
            name: self.book.stats(service_key(upstream.node_id), now, s) for name, s in WINDOW_SECONDS.items()
        }
        backends = []
        known = set()
        standard: dict[str, float] = dict(WINDOW_SECONDS)
        for server in upstream.servers:
            known.add(server.endpoint)
            seconds = canary.get(server.machine_id)  # an endpoint's id, for a task of a service
            backends.append(
                self._backend(
                    backend_key(upstream.node_id, server.endpoint),
                    server.endpoint,
                    now,
                    standard if seconds is None else {**standard, CANARY_WINDOW: seconds},
                    hostname=server.hostname,
                    state=server.down or "serving",
                )
            )
        prefix = backend_key(upstream.node_id, "")
        for key in self.book.keys():  # noqa: SIM118 - the book is not a mapping
            address = key[len(prefix) :]
            if key.startswith(prefix) and address not in known:
                backends.append(self._backend(key, address, now, standard, state="not bound"))
        return ServiceAvailability(
            node_id=upstream.node_id,
            path=upstream.path,
            windows=windows,
            backends=backends,
            alert=self.firing.get(upstream.node_id),
        )

    async def evaluate_alerts(self, snapshot: RoutingSnapshot, now: float) -> None:
        index = SnapshotIndex(snapshot)
        for upstream in routing_table(snapshot).upstreams:
            node = index.nodes[upstream.node_id]
            policy = policy_for(index, node)
            firing = upstream.node_id in self.firing
            if policy.alert_below is None:
                if firing:
                    del self.firing[upstream.node_id]
                continue
            stats = self.book.stats(service_key(node.id), now, WINDOW_SECONDS[policy.alert_window])
            change = alert_change(
                firing, stats, threshold=policy.alert_below, min_requests=policy.alert_min_requests
            )
            if change is None:
                continue
            shown = "no requests" if stats.availability is None else f"{stats.availability:.4f}"
            figures: dict[str, Figure] = {
                "availability": -1.0 if stats.availability is None else round(stats.availability, 4),
                "requests": stats.requests,
                "errors": stats.errors,
                "threshold": policy.alert_below,
                "window": policy.alert_window,
            }
            if change == "fire":
                reason = (
                    f"{node.path}: availability {shown} over the last {policy.alert_window}"
                    f" ({stats.errors} of {stats.requests} requests 5xx) is under {policy.alert_below}"
                )
                self.firing[node.id] = reason
                await self._record("alert_firing", reason, figures)
            else:
                reason = f"{node.path}: availability {shown} over the last {policy.alert_window} is back"
                self.firing.pop(node.id, None)
                await self._record("alert_resolved", reason, figures)
            if policy.webhook:
                payload = {
                    "gateway": self.gateway,
                    "state": "firing" if change == "fire" else "resolved",
                    "node": node.path,
                    "reason": reason,
                    **figures,
                }
                await post_webhook(policy.webhook, payload)

    async def evaluate_ejections(self, snapshot: RoutingSnapshot, now: float) -> None:
        index = SnapshotIndex(snapshot)
        await self._probe_ejected(snapshot, index, now)
        for upstream in routing_table(snapshot).upstreams:
            node = index.nodes[upstream.node_id]
            policy = policy_for(index, node)
            if policy.eject_below is None or not upstream.servers:
                continue
            window = WINDOW_SECONDS[policy.eject_window]
            health = []
            for server in upstream.servers:
                state = index.states.get((node.id, server.machine_id))
                stats = self.book.stats(backend_key(node.id, server.endpoint), now, window)
                health.append(
                    BackendHealth(
                        machine_id=server.machine_id,
                        hostname=server.hostname,
                        address=server.endpoint,
                        requests=stats.requests,
                        availability=stats.availability,
                        ejected=bool(state and state.ejected),
                        pin=state.pin if state else None,
                        weight_zero=server.down == "weight 0",
                        probe_successes=self._probe_ok.get((node.id, server.machine_id), 0),
                    )
                )
            rule = EjectionRule(
                threshold=policy.eject_below,
                min_requests=policy.eject_min_requests,
                cap=policy.eject_cap,
                probes_needed=self.options.probes_needed,
            )
            for decision in decide_ejections(node.path, health, rule):
                ejecting = decision.action == "eject"
                update = BackendUpdate(ejected=ejecting, reason=decision.reason, figures=decision.figures)
                # A bound machine is named by its hostname, an endpoint (a task) by its id.
                name = decision.hostname if decision.machine_id in index.machines else decision.machine_id
                await self._set_backend(node.path, name, update)
                self._probe_ok.pop((node.id, decision.machine_id), None)
                if not ejecting:
                    endpoint = next(
                        s.endpoint for s in upstream.servers if s.machine_id == decision.machine_id
                    )
                    self.book.forget(backend_key(node.id, endpoint))  # back with a clean record
                await self._record("ejected" if ejecting else "restored", decision.reason, decision.figures)

    async def _probe_ejected(self, snapshot: RoutingSnapshot, index: SnapshotIndex, now: float) -> None:
        """Probe every ejected backend on the node's shortest route (with one of its domains as Host)."""
        if now - self._last_probe < self.options.probe_interval_s:
            return
        self._last_probe = now
        for upstream in routing_table(snapshot).upstreams:
            node = index.nodes[upstream.node_id]
            shortest = location_order(r.uri for r in node.domain_uris)[-1]
            domain = index.domains.get(node.domain_uris[0].domain_id)
            for server in upstream.servers:
                if server.down != "ejected":
                    continue
                ok = await probe(
                    server.address, server.port, shortest, domain.name if domain else server.address
                )
                key = (node.id, server.machine_id)
                self._probe_ok[key] = self._probe_ok.get(key, 0) + 1 if ok else 0

    def close(self) -> None:
        self.tailer.close()


def wall_clock() -> float:
    """Seconds since the epoch: access-log times (`msec`) are wall-clock times."""
    return time.time()
