"""Request bodies of the gateway's API: events a gateway records, backend pins and ejections, health
policies, and the availability reports a gateway sends."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from treeherd.model.gateway import Figure, GatewayEventType, Pin, WindowName


class _Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class GatewayEventIn(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Something a gateway did; `config_sha256` (when given) is the configuration now live. With
    `alert_firing` or `alert_resolved`, `alert: crash_loop` says the alert is the gateway's own (its
    nginx master's crash loop), kept on its record until resolved; availability alerts leave it out, and
    other event types ignore it."""

    type: GatewayEventType
    reason: str
    figures: dict[str, Figure] = {}
    config_sha256: str | None = None
    alert: Literal["crash_loop"] | None = None


class BackendUpdate(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator's pin (`in`, `out`, null to clear) or a gateway's ejection (`ejected` with the
    reason and figures); absent fields stay as they are."""

    pin: Pin | UnsetType | None = UNSET
    ejected: bool | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    figures: dict[str, Figure] | UnsetType = UNSET


class PolicySet(_Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A node's health policy; absent fields keep their current (or default) values, null switches a
    rule off."""

    alert_below: float | UnsetType | None = UNSET
    alert_window: WindowName | UnsetType = UNSET
    alert_min_requests: int | UnsetType = UNSET
    webhook: str | UnsetType | None = UNSET
    eject_below: float | UnsetType | None = UNSET
    eject_window: WindowName | UnsetType = UNSET
    eject_min_requests: int | UnsetType = UNSET
    eject_cap: float | UnsetType = UNSET
