"""The supervised proxies' own records: what happened to a host's local haproxy, and the crash-loop alert
of a proxy master (the gateway's nginx keeps its alert on its `GatewayRecord`).

- `ProxyRecord` (one per host whose agent runs a local haproxy): its recent events (restarts with their
  cause, failed restarts, the crash-loop alert firing and resolving); every update is a store event, so
  `treeherd events --kind proxy` shows them as they happen, with the host.
- `CrashLoop` (in `model.gateway`): a firing crash-loop alert (a master that keeps dying right after its restarts): since when
  and why. It resolves once the master has stayed up again.
- `Alert`: one firing alert as `treeherd alerts` lists it, whatever raised it (an availability rule of
  the gateway, or a proxy's crash loop).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

from treeherd.model.base import Object
from treeherd.model.gateway import CrashLoop, Figure

ProxyName = Literal["haproxy", "nginx"]
ProxyEventType = Literal["restarted", "error", "alert_firing", "alert_resolved"]
AlertKind = Literal["availability", "crash_loop"]
RECENT_PROXY_EVENTS = 50


class ProxyEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened to a host's proxy, with why and the figures behind it."""

    at: datetime
    type: ProxyEventType
    reason: str
    figures: dict[str, Figure] = {}


class ProxyRecord(Object, frozen=True, kw_only=True, tag="proxy"):
    """A host's local proxy: its recent events (the last 50; the event stream has all) and its firing
    crash-loop alert, if any."""

    kind: ClassVar[str] = "proxy"
    hostname: str
    machine_id: str
    proxy: ProxyName = "haproxy"
    last_event: ProxyEvent | None = None
    recent: list[ProxyEvent] = []
    crash_loop: CrashLoop | None = None

    def summary(self) -> str:
        """One line for `treeherd events`: the last event (a restart says `proxy restarted: ...`)."""
        if self.last_event is None:
            return ""
        if self.last_event.type == "restarted":
            return f"{self.proxy} {self.last_event.reason}"
        return f"{self.proxy} {self.last_event.type}: {self.last_event.reason}"


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """A firing alert: `source` raised it (a gateway's name, or a host), about `subject` (a service's
    path, or the proxy: `nginx`, `haproxy`)."""

    kind: AlertKind
    source: str
    subject: str
    reason: str
    since: datetime | None = None
