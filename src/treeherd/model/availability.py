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
    """A backend of a service (`address` as nginx logs it), by window name (1m, 5m, 1h, and `canary`:
    the window of a canary under way on the service the backend belongs to), with each window's latency
    histogram (counts by the gateway's latency bounds: windows of several backends add up by them)."""

    address: str
    hostname: str = ""
    state: str = "serving"
    windows: dict[str, WindowStats] = {}
    histograms: dict[str, list[int]] = {}


class VersionAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """The backends that are tasks of one spec version of a service, taken together (`canary`: the
    version a canary runs)."""

    service: str
    spec_version: int
    canary: bool = False
    backends: int = 0
    windows: dict[str, WindowStats] = {}


class ServiceAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """A service (a routed tree node) and its backends, by window name; `alert` is the firing alert's
    reason, if one fires."""

    node_id: str
    path: str
    windows: dict[str, WindowStats] = {}
    backends: list[BackendAvailability] = []
    alert: str | None = None
    # Filled by the manager: the backends grouped by the spec version of the task each one is.
    versions: list[VersionAvailability] = []


class AvailabilityReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one gateway measured at `at`."""

    gateway: str
    at: datetime
    services: list[ServiceAvailability] = []
