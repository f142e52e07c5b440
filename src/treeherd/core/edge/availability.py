"""Availability from access-log records over sliding windows (N5), and the alert rule's state machine.

Pure: the time of a record is the request's own (`msec` in the log), and every question takes `now`.
- A series counts requests, 5xx answers and a latency histogram in 10-second buckets for the last hour;
  a window (1 min, 5 min, 1 h) sums the buckets that started inside it, so windows are exact to one
  bucket. Percentiles are read from the histogram (linear inside a bucket); windows of several keys
  add up exactly through their histograms (`merged`: the figures of one version's backends).
- A service is the node of the matched route (its availability uses the status nginx answered); a
  backend is an upstream address of that node (each attempt counts with its own upstream status, so a
  backend that failed before nginx retried elsewhere is still charged for it).
- An alert fires when a window holds at least the minimum number of requests and its availability is
  under the threshold, and resolves when the availability is back at or above it (or the window is
  empty). Too few requests change nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Literal

import msgspec

from treeherd.model.availability import WindowStats

BUCKET_S = 10
HORIZON_S = 3600
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
)  # fmt: skip


class AccessRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of one JSON access-log line that availability needs (others are ignored)."""

    msec: float
    node: str = ""
    status: int
    request_time: float = 0.0
    upstream_addr: str = ""
    upstream_status: str = ""
    upstream_response_time: str = ""


_decode_record = msgspec.json.Decoder(AccessRecord).decode


def parse_access_line(line: bytes) -> AccessRecord | None:
    """The record of one log line, or None for a line that is not one of ours (or is cut short)."""
    try:
        return _decode_record(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def upstream_attempts(record: AccessRecord) -> Iterator[tuple[str, bool, float]]:
    """(address, failed, latency ms) for each upstream nginx tried; nginx lists them comma-separated
    (`"10.0.0.1:80, 10.0.0.2:80"`) with one status and one time each."""
    if not record.upstream_addr or record.upstream_addr == "-":
        return
    addresses = [a.strip() for a in record.upstream_addr.replace(" : ", ", ").split(",")]
    statuses = [s.strip() for s in record.upstream_status.replace(" : ", ", ").split(",")]
    times = [t.strip() for t in record.upstream_response_time.replace(" : ", ", ").split(",")]
    for index, address in enumerate(addresses):
        if not address or address.startswith("unix:"):
            continue
        status = statuses[index] if index < len(statuses) else ""
        failed = not status.isdigit() or int(status) >= 500
        try:
            latency = float(times[index]) * 1000.0 if index < len(times) else 0.0
        except ValueError:
            latency = 0.0
        yield address, failed, latency


class Bucket(msgspec.Struct, kw_only=True):
    start: int
    requests: int = 0
    errors: int = 0
    histogram: list[int] = msgspec.field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))


class Series(msgspec.Struct, kw_only=True):
    """One key's buckets, oldest first."""

    buckets: list[Bucket] = []

    def add(self, at: float, failed: bool, latency_ms: float) -> None:
        start = int(at // BUCKET_S) * BUCKET_S
        bucket = next((b for b in reversed(self.buckets[-3:]) if b.start == start), None)
        if bucket is None:
            bucket = Bucket(start=start)
            self.buckets.append(bucket)
            if len(self.buckets) > 1 and self.buckets[-2].start > start:
                self.buckets.sort(key=lambda b: b.start)  # a late record: keep the order
        bucket.requests += 1
        bucket.errors += int(failed)
        bucket.histogram[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1

    def prune(self, now: float) -> None:
        oldest = now - HORIZON_S - BUCKET_S
        if self.buckets and self.buckets[0].start < oldest:
            self.buckets = [b for b in self.buckets if b.start >= oldest]

    def stats(self, now: float, window_s: float) -> WindowStats:
        return stats_of(*self.window(now, window_s))

    def window(self, now: float, window_s: float) -> tuple[int, int, list[int]]:
        """Requests, errors and the latency histogram (by LATENCY_BOUNDS_MS) of the window."""
        since = now - window_s
        inside = [b for b in self.buckets if b.start + BUCKET_S > since and b.start <= now]
        requests = sum(b.requests for b in inside)
        errors = sum(b.errors for b in inside)
        histogram = (
            [sum(column) for column in zip(*(b.histogram for b in inside), strict=True)] if inside else []
        )
        return requests, errors, histogram


def stats_of(requests: int, errors: int, histogram: list[int]) -> WindowStats:
    """A window's figures from its counts and latency histogram (windows add up by their histograms)."""
    return WindowStats(
        requests=requests,
        errors=errors,
        availability=None if requests == 0 else (requests - errors) / requests,
        p50_ms=_percentile(histogram, requests, 0.50),
        p90_ms=_percentile(histogram, requests, 0.90),
        p99_ms=_percentile(histogram, requests, 0.99),
    )


def merged(parts: Iterable[tuple[WindowStats, list[int]]]) -> WindowStats:
    """The figures of several windows taken together (say every backend of one version), from each one's
    figures and latency histogram: exact, percentiles included."""
    requests = errors = 0
    histogram = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for stats, counts in parts:
        requests += stats.requests
        errors += stats.errors
        for index, count in enumerate(counts[: len(histogram)]):
            histogram[index] += count
    return stats_of(requests, errors, histogram)


def _percentile(histogram: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_MS[index - 1] if index > 0 else 0.0
            high = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 2
            return round(low + (high - low) * (rank - seen) / count, 3)
        seen += count
    return None


def service_key(node_id: str) -> str:
    return f"service {node_id}"


def backend_key(node_id: str, address: str) -> str:
    return f"backend {node_id} {address}"


class AvailabilityBook(msgspec.Struct, kw_only=True):
    """Every series, keyed by service or backend; encodable, so it persists with the log offsets."""

    series: dict[str, Series] = {}

    def record(self, record: AccessRecord) -> None:
        if not record.node:
            return  # the default server: no service to charge
        latency = record.request_time * 1000.0
        self._series(service_key(record.node)).add(record.msec, record.status >= 500, latency)
        for address, failed, upstream_latency in upstream_attempts(record):
            self._series(backend_key(record.node, address)).add(record.msec, failed, upstream_latency)

    def record_all(self, records: Iterable[AccessRecord]) -> int:
        count = 0
        for record in records:
            self.record(record)
            count += 1
        return count

    def _series(self, key: str) -> Series:
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = Series()
        return found

    def stats(self, key: str, now: float, window_s: float) -> WindowStats:
        found = self.series.get(key)
        return found.stats(now, window_s) if found is not None else WindowStats()

    def window(self, key: str, now: float, window_s: float) -> tuple[int, int, list[int]]:
        found = self.series.get(key)
        return found.window(now, window_s) if found is not None else (0, 0, [])

    def keys(self) -> list[str]:
        return sorted(self.series)

    def forget(self, key: str) -> None:
        """Drop a series (a backend restored after an ejection starts with a clean record)."""
        self.series.pop(key, None)

    def prune(self, now: float) -> None:
        for key in list(self.series):
            series = self.series[key]
            series.prune(now)
            if not series.buckets:
                del self.series[key]


AlertChange = Literal["fire", "resolve"]


def alert_change(
    firing: bool, stats: WindowStats, *, threshold: float, min_requests: int
) -> AlertChange | None:
    """What an alert rule does given its window's figures: fire, resolve, or nothing."""
    if stats.requests == 0 or stats.availability is None:
        return "resolve" if firing else None
    if stats.requests < min_requests:
        return None
    below = stats.availability < threshold
    if below and not firing:
        return "fire"
    if not below and firing:
        return "resolve"
    return None
