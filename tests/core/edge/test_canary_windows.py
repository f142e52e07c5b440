"""Availability per spec version (core/edge/canary_windows.py): windows add up exactly through their
histograms, backends are grouped by the version of the task each one is, the canary window is the
canary's (or shorter while it has served less), and the judge's figures add up every gateway's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.edge.availability import AccessRecord, AvailabilityBook, backend_key, merged, stats_of
from treeherd.core.edge.canary_windows import (
    CANARY_WINDOW,
    address_of,
    by_version,
    canary_figures,
    canary_windows,
)
from treeherd.model.availability import BackendAvailability, ServiceAvailability
from treeherd.model.discovery import Endpoint
from treeherd.model.routing import RoutingSnapshot
from treeherd.model.services import CanaryPolicy, CanaryStatus, Service, TaskSpec, UpdateStatus

T0 = 1_800_000_000.0
NOW = datetime.fromtimestamp(T0, UTC)


def book_of(latencies: dict[str, list[tuple[float, bool]]]) -> AvailabilityBook:
    book = AvailabilityBook()
    for address, requests in latencies.items():
        for index, (seconds, failed) in enumerate(requests):
            book.record(
                AccessRecord(
                    msec=T0 - 1 - index % 50,
                    node="n",
                    status=500 if failed else 200,
                    request_time=seconds,
                    upstream_addr=address,
                    upstream_status="500" if failed else "200",
                    upstream_response_time=str(seconds),
                )
            )
    return book


requests_st = st.lists(st.tuples(st.floats(min_value=0, max_value=20), st.booleans()), max_size=60)


@given(a=requests_st, b=requests_st)
def test_merged_windows_are_the_window_of_all_their_requests(a, b) -> None:
    """Two backends added up through their histograms give what one backend with every request gives."""
    apart = book_of({"10.0.0.1:80": a, "10.0.0.2:80": b})
    together = book_of({"10.0.0.9:80": a + b})
    parts = []
    for address in ("10.0.0.1:80", "10.0.0.2:80"):
        requests, errors, histogram = apart.window(backend_key("n", address), T0, 60)
        parts.append((stats_of(requests, errors, histogram), histogram))
    assert merged(parts) == together.stats(backend_key("n", "10.0.0.9:80"), T0, 60)


def backend(address: str, requests: int, errors: int, window: str = "1m") -> BackendAvailability:
    histogram = [0] * 16
    histogram[3] = requests  # 5-10 ms
    stats = stats_of(requests, errors, histogram)
    return BackendAvailability(address=address, windows={window: stats}, histograms={window: histogram})


def test_backends_are_grouped_by_the_version_of_their_task() -> None:
    service = ServiceAvailability(
        node_id="n",
        path="shop",
        backends=[
            backend("10.0.0.1:80", 100, 0),
            backend("10.0.0.2:80", 100, 10),
            backend("10.0.0.3:80", 50, 25),
            backend("10.0.0.4:80", 7, 7),  # not a task: left out
        ],
    )
    versions = {"10.0.0.1:80": ("web", 1), "10.0.0.2:80": ("web", 1), "10.0.0.3:80": ("web", 2)}
    old, new = by_version(service, versions, {"web": 2})
    assert (old.spec_version, old.canary, old.backends) == (1, False, 2)
    assert (old.windows["1m"].requests, old.windows["1m"].errors, old.windows["1m"].availability) == (
        200,
        10,
        0.95,
    )
    assert (new.spec_version, new.canary, new.backends, new.windows["1m"].availability) == (2, True, 1, 0.5)


def test_the_judge_adds_up_every_gateways_canary_window() -> None:
    gateway_a = ServiceAvailability(
        node_id="n",
        path="shop",
        backends=[
            backend("10.0.0.1:80", 300, 0, CANARY_WINDOW),
            backend("10.0.0.3:80", 80, 16, CANARY_WINDOW),
        ],
    )
    gateway_b = ServiceAvailability(
        node_id="n",
        path="shop",
        backends=[
            backend("10.0.0.1:80", 100, 0, CANARY_WINDOW),
            backend("10.0.0.3:80", 20, 4, CANARY_WINDOW),
            backend("10.0.0.2:80", 500, 0, "1m"),  # no canary window (yet): left out
        ],
    )
    versions = {"10.0.0.1:80": ("web", 3), "10.0.0.2:80": ("web", 3), "10.0.0.3:80": ("web", 4)}
    old, new = canary_figures([gateway_a, gateway_b], versions, "web", 4)
    assert (old.spec_version, old.requests, old.errors, old.availability) == (3, 400, 0, 1.0)
    assert (new.spec_version, new.requests, new.errors, new.availability) == (4, 100, 20, 0.8)
    assert new.p99_ms is not None and 5 <= new.p99_ms <= 10


def test_the_canary_window_is_the_canarys_or_since_it_serves() -> None:
    def service(name: str, serving_at: datetime | None, state: str = "canary") -> Service:
        canary = CanaryStatus(policy=CanaryPolicy(tasks=1, window_s=60), tasks=1, serving_at=serving_at)
        return Service(
            id=name,
            created_at=NOW,
            updated_at=NOW,
            name=name,
            node_id="n",
            task=TaskSpec(command=["x"]),
            update_status=UpdateStatus(state=state, started_at=NOW, canary=canary),  # type: ignore[arg-type]
        )

    def endpoint(name: str, port: int) -> Endpoint:
        return Endpoint(
            id=f"e{port}", created_at=NOW, updated_at=NOW, service=name, address="10.0.0.1", port=port
        )

    snapshot = RoutingSnapshot(
        services=[
            service("young", NOW - timedelta(seconds=20)),
            service("old", NOW - timedelta(seconds=600)),
            service("starting", None),
            service("promoted", NOW - timedelta(seconds=5), state="updating"),
        ],
        endpoints=[
            endpoint("young", 1),
            endpoint("old", 2),
            endpoint("starting", 3),
            endpoint("promoted", 4),
        ],
    )
    assert canary_windows(snapshot, T0) == {"e1": 20.0, "e2": 60.0}
    assert address_of("10.0.0.1", 80) == "10.0.0.1:80" and address_of("::1", 80) == "[::1]:80"
