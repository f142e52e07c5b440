"""Sliding windows, percentiles and the alert rule (core/edge/availability.py), with `now` passed in."""

from __future__ import annotations

from treeherd.core.edge.availability import (
    AccessRecord,
    AvailabilityBook,
    alert_change,
    backend_key,
    parse_access_line,
    service_key,
)
from treeherd.model.availability import WindowStats

T0 = 1_800_000_000.0


def record(at: float, status: int = 200, *, node: str = "n1", addr: str = "10.0.0.1:80", upstream: str = "200",
           time_s: float = 0.010) -> AccessRecord:  # fmt: skip
    return AccessRecord(
        msec=at, node=node, status=status, request_time=time_s, upstream_addr=addr, upstream_status=upstream,
        upstream_response_time=str(time_s),
    )  # fmt: skip


def test_parses_nginx_json_lines_and_skips_others() -> None:
    line = (
        b'{"time":"2026-01-01T00:00:00+00:00","msec":1800000000.123,"host":"a","node":"n1","status":502,'
        b'"request_time":0.004,"upstream_addr":"10.0.0.1:80, 10.0.0.2:80","upstream_status":"502, 200",'
        b'"upstream_response_time":"0.001, 0.003","bytes":0}'
    )
    parsed = parse_access_line(line)
    assert parsed is not None and parsed.status == 502 and parsed.node == "n1"
    assert parse_access_line(b"not json") is None
    assert parse_access_line(b'{"msec": 1') is None  # cut short


def test_windows_count_only_their_own_span() -> None:
    book = AvailabilityBook()
    book.record(record(T0 - 3000, 500))  # only inside 1 h
    book.record(record(T0 - 200, 500))  # inside 5 min and 1 h
    for i in range(8):
        book.record(record(T0 - 5 - i))  # inside every window
    now = T0
    one_minute = book.stats(service_key("n1"), now, 60)
    assert (one_minute.requests, one_minute.errors, one_minute.availability) == (8, 0, 1.0)
    five = book.stats(service_key("n1"), now, 300)
    assert (five.requests, five.errors) == (9, 1)
    hour = book.stats(service_key("n1"), now, 3600)
    assert (hour.requests, hour.errors) == (10, 2) and hour.availability == 0.8
    assert book.stats(service_key("other"), now, 60) == WindowStats()


def test_each_upstream_attempt_is_charged_to_its_backend() -> None:
    book = AvailabilityBook()
    book.record(record(T0, 200, addr="10.0.0.1:80, 10.0.0.2:80", upstream="502, 200"))
    assert book.stats(backend_key("n1", "10.0.0.1:80"), T0, 60).errors == 1
    assert book.stats(backend_key("n1", "10.0.0.2:80"), T0, 60).errors == 0
    assert book.stats(service_key("n1"), T0, 60).availability == 1.0  # the client got its 200


def test_percentiles_from_the_histogram() -> None:
    book = AvailabilityBook()
    for i in range(100):
        book.record(record(T0, time_s=0.003 if i < 90 else 0.300))
    stats = book.stats(service_key("n1"), T0, 60)
    assert stats.p50_ms is not None and 2 <= stats.p50_ms <= 5
    assert stats.p99_ms is not None and 200 <= stats.p99_ms <= 500


def test_prune_drops_what_left_the_hour_and_the_book_round_trips() -> None:
    import msgspec

    book = AvailabilityBook()
    book.record(record(T0 - 4000))
    book.record(record(T0))
    book.prune(T0)
    assert book.stats(service_key("n1"), T0, 3600).requests == 1
    copy = msgspec.json.decode(msgspec.json.encode(book), type=AvailabilityBook)
    assert copy.stats(service_key("n1"), T0, 3600) == book.stats(service_key("n1"), T0, 3600)


def test_default_server_lines_charge_no_service() -> None:
    book = AvailabilityBook()
    book.record(record(T0, 404, node=""))
    assert book.keys() == []


def test_alert_fires_resolves_and_ignores_thin_windows() -> None:
    low = WindowStats(requests=50, errors=10, availability=0.8)
    good = WindowStats(requests=50, errors=0, availability=1.0)
    thin = WindowStats(requests=3, errors=3, availability=0.0)
    empty = WindowStats()
    rule = {"threshold": 0.9, "min_requests": 20}
    assert alert_change(False, low, **rule) == "fire"  # type: ignore[arg-type]
    assert alert_change(True, low, **rule) is None  # type: ignore[arg-type]
    assert alert_change(True, good, **rule) == "resolve"  # type: ignore[arg-type]
    assert alert_change(False, thin, **rule) is None  # type: ignore[arg-type]
    assert alert_change(True, thin, **rule) is None  # type: ignore[arg-type]
    assert alert_change(True, empty, **rule) == "resolve"  # type: ignore[arg-type]
    assert alert_change(False, WindowStats(requests=20, errors=2, availability=0.9), **rule) is None  # type: ignore[arg-type]
