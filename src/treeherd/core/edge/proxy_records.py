"""Plans for the records of supervised proxies, and the list of firing alerts.

- `plan_proxy_event` appends an event an agent reported about its local haproxy to the host's
  `ProxyRecord` (created on its first event); `alert_firing` sets the record's crash-loop alert,
  `alert_resolved` clears it (and is dropped when none fires). A record keeps its last
  RECENT_PROXY_EVENTS events.
- `crash_loop_change` is the same rule for the gateway's own record (its nginx master's crash loop).
- `firing_alerts` gathers every firing alert where an operator looks for them (`treeherd alerts`):
  availability alerts from the gateways' reports, crash loops from the gateway and proxy records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

import msgspec

from treeherd.core.view import View
from treeherd.model.availability import ServiceAvailability
from treeherd.model.errors import InvalidInput
from treeherd.model.gateway import CrashLoop, Figure, GatewayRecord
from treeherd.model.ops import Create, Op, Update
from treeherd.model.proxies import (
    RECENT_PROXY_EVENTS,
    Alert,
    ProxyEvent,
    ProxyEventType,
    ProxyRecord,
)

__all__ = ["crash_loop_change", "firing_alerts", "plan_proxy_event"]

MAX_REASON = 2000
MAX_FIGURES = 20


def crash_loop_change(current: CrashLoop | None, type: str, reason: str, now: datetime) -> CrashLoop | None:
    """The crash-loop alert after an event: set when it fires (kept from its first firing), cleared
    when it resolves, unchanged otherwise."""
    if type == "alert_firing":
        return current or CrashLoop(since=now, reason=reason)
    if type == "alert_resolved":
        return None
    return current


def plan_proxy_event(
    view: View,
    *,
    hostname: str,
    machine_id: str,
    type: ProxyEventType,
    reason: str,
    figures: dict[str, Figure],
    now: datetime,
    new_id: Callable[[], str],
) -> list[Op]:
    """Append the event to the host's proxy record (created on its first event). An `alert_resolved`
    with no alert firing changes nothing: an agent that restarted does not know whether its previous
    run left one firing, and says it is over once its master stayed up."""
    if not reason or len(reason) > MAX_REASON:
        raise InvalidInput(f"reason must be 1-{MAX_REASON} characters", field="reason")
    if len(figures) > MAX_FIGURES:
        raise InvalidInput(f"at most {MAX_FIGURES} figures", field="figures")
    event = ProxyEvent(at=now, type=type, reason=reason, figures=dict(figures))
    record = view.lookup(ProxyRecord, "hostname", hostname)
    if type == "alert_resolved" and (record is None or record.crash_loop is None):
        return []
    if record is None:
        created = ProxyRecord(
            id=new_id(),
            created_at=now,
            updated_at=now,
            hostname=hostname,
            machine_id=machine_id,
            last_event=event,
            recent=[event],
            crash_loop=crash_loop_change(None, type, reason, now),
        )
        return [Create(created)]
    updated = msgspec.structs.replace(
        record,
        updated_at=now,
        machine_id=machine_id,
        last_event=event,
        recent=[*record.recent, event][-RECENT_PROXY_EVENTS:],
        crash_loop=crash_loop_change(record.crash_loop, type, reason, now),
    )
    return [Update(updated)]


def firing_alerts(
    gateways: Iterable[GatewayRecord],
    proxies: Iterable[ProxyRecord],
    services: Iterable[tuple[str, ServiceAvailability]],
) -> list[Alert]:
    """Every firing alert: proxies' crash loops first (the edge or a host lost its proxy), then the
    availability alerts of services, as (gateway, service) pairs from the gateways' reports."""
    found = [
        Alert(
            kind="crash_loop",
            source=g.name,
            subject="nginx",
            reason=g.crash_loop.reason,
            since=g.crash_loop.since,
        )
        for g in sorted(gateways, key=lambda g: g.name)
        if g.crash_loop is not None
    ]
    found += [
        Alert(
            kind="crash_loop",
            source=p.hostname,
            subject=p.proxy,
            reason=p.crash_loop.reason,
            since=p.crash_loop.since,
        )
        for p in sorted(proxies, key=lambda p: p.hostname)
        if p.crash_loop is not None
    ]
    found += [
        Alert(kind="availability", source=gateway, subject=service.path, reason=service.alert)
        for gateway, service in services
        if service.alert is not None
    ]
    return found
