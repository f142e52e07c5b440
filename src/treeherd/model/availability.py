"""Availability figures (N5): per window, per service and per backend, as a gateway reports them to
the manager and the API serves them."""

from __future__ import annotations

from datetime import datetime

import msgspec


class WindowStats(msgspec.Struct, frozen=True, kw_only=True):
    """One sliding window: requests, 5xx answers, the share not 5xx (None without requests) and
    latency percentiles in milliseconds."""

    requests: int = 0
    errors: int = 0
    availability: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None


class BackendAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """A backend of a service (`address` as nginx logs it), by window name (1m, 5m, 1h)."""

    address: str
    hostname: str = ""
    state: str = "serving"
    windows: dict[str, WindowStats] = {}


class ServiceAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """A service (a routed tree node) and its backends, by window name; `alert` is the firing alert's
    reason, if one fires."""

    node_id: str
    path: str
    windows: dict[str, WindowStats] = {}
    backends: list[BackendAvailability] = []
    alert: str | None = None


class AvailabilityReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one gateway measured at `at`."""

    gateway: str
    at: datetime
    services: list[ServiceAvailability] = []
