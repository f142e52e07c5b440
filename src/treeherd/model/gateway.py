"""The stored objects of the edge gateway: backend states, health policies and gateway records, plus
the snapshot the gateway renders from.

- `BackendState` (one per node and machine): an operator's pin (`in` keeps the backend serving whatever
  its availability, `out` takes it out) and the gateway's automatic ejection with the figures behind it.
- `HealthPolicy` (at most one per node, inherited whole by the subtree): the alert rule (threshold,
  window, minimum request count, optional webhook) and the ejection rule (threshold, window, minimum
  request count, cap on the share of a node's backends ejected at once). The root policy (node id "",
  path `/`) is what a node without a policy of its own or of an ancestor follows; until one is stored,
  it is `DEFAULT_POLICY`: no alert, ejection under 0.5 availability over 1 min with at least 20 requests.
- `GatewayRecord` (one per gateway): what it did last (render, reload, rejection, rollback, alert,
  ejection, a restart of its nginx master), with the reason, and its nginx master's crash-loop alert
  while it fires; every update is a store event, so `treeherd events --kind gateway` shows the
  gateway's history as it happens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar, Literal

import msgspec

from treeherd.model.base import Object

Pin = Literal["in", "out"]
WindowName = Literal["1m", "5m", "1h"]
WINDOW_SECONDS: dict[str, int] = {"1m": 60, "5m": 300, "1h": 3600}
GatewayEventType = Literal[
    "started",
    "render",
    "unchanged",
    "reload",
    "rejected",
    "rollback",
    "error",
    "alert_firing",
    "alert_resolved",
    "ejected",
    "restored",
]
Figure = int | float | str
RECENT_GATEWAY_EVENTS = 50
ROOT_POLICY_NODE = ""  # the node id of the root policy, which every node inherits last


class BackendState(Object, frozen=True, kw_only=True, tag="backend"):
    """The serving state of one backend (a machine bound to a node) beyond its binding weight."""

    kind: ClassVar[str] = "backend"
    node_id: str
    machine_id: str
    pin: Pin | None = None
    ejected: bool = False
    reason: str = ""
    figures: dict[str, Figure] = {}


class HealthPolicy(Object, frozen=True, kw_only=True, tag="policy"):
    """Alert and ejection rules of a node and its subtree (the nearest node with a policy wins).

    A threshold is the lowest acceptable availability, the share of requests not answered with 5xx
    (0-1); None switches that rule off.
    """

    kind: ClassVar[str] = "policy"
    node_id: str
    alert_below: float | None = None
    alert_window: WindowName = "5m"
    alert_min_requests: int = 20
    webhook: str | None = None
    eject_below: float | None = 0.5
    eject_window: WindowName = "1m"
    eject_min_requests: int = 20
    eject_cap: float = 0.34


class GatewayEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a gateway did or saw, with why and the figures that caused it."""

    at: datetime
    type: GatewayEventType
    reason: str
    figures: dict[str, Figure] = {}


class CrashLoop(msgspec.Struct, frozen=True, kw_only=True):
    """A firing crash-loop alert: a proxy master that did not stay up after its restarts, since when and
    why. It resolves once the master has stayed up again."""

    since: datetime
    reason: str


class GatewayRecord(Object, frozen=True, kw_only=True, tag="gateway"):
    """A gateway's live configuration and its recent events (the last 50; the event stream has all), and
    the crash-loop alert of its nginx master while it fires."""

    kind: ClassVar[str] = "gateway"
    name: str
    config_sha256: str = ""
    last_event: GatewayEvent | None = None
    recent: list[GatewayEvent] = []
    crash_loop: CrashLoop | None = None

    def summary(self) -> str:
        """One line for `treeherd events`: the last event and its reason."""
        if self.last_event is None:
            return ""
        return f"{self.last_event.type}: {self.last_event.reason}"


DEFAULT_POLICY = HealthPolicy(
    id="default",
    created_at=datetime(1970, 1, 1, tzinfo=UTC),
    updated_at=datetime(1970, 1, 1, tzinfo=UTC),
    node_id=ROOT_POLICY_NODE,
)
