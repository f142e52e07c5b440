"""The gateway's availability report during a canary (gateway/health.py): every backend of a service
whose canary serves gets a `canary` window (the canary's, or since it serves) beside 1m/5m/1h, and each
window comes with its latency histogram, so the manager can add backends up per version exactly."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec

from treeherd.core.edge.availability import AccessRecord
from treeherd.core.edge.canary_windows import CANARY_WINDOW
from treeherd.gateway.health import HealthMonitor
from treeherd.model.discovery import Endpoint
from treeherd.model.objects import DomainUri
from treeherd.model.routing import RoutingSnapshot
from treeherd.model.services import CanaryPolicy, CanaryStatus, UpdateStatus
from treeherd.testing import factories as f

NOW = f.FIXED_NOW.timestamp()


def snapshot(serving_s: float | None) -> RoutingSnapshot:
    domain = f.domain("shop.test", id="d1")
    shop = f.node("shop", id="n1", domain_uris=[DomainUri(domain_id="d1", uri="/")])
    status = None
    if serving_s is not None:
        canary = CanaryStatus(
            policy=CanaryPolicy(tasks=1, window_s=60),
            tasks=1,
            slots=["1"],
            serving_at=f.FIXED_NOW - timedelta(seconds=serving_s),
        )
        status = UpdateStatus(state="canary", started_at=f.FIXED_NOW, canary=canary)
    web = f.service("web", "n1", id="s1", update_status=status)
    endpoints = [
        Endpoint(
            id=f"e{n}",
            created_at=f.FIXED_NOW,
            updated_at=f.FIXED_NOW,
            service="web",
            address="127.0.0.1",
            port=30000 + n,
            source="task",
            task_id=f"t{n}",
        )
        for n in (1, 2)
    ]
    return RoutingSnapshot(nodes=[shop], domains=[domain], services=[web], endpoints=endpoints)


async def _nothing(*args: object) -> None:
    return None


def monitor(tmp_path: Path) -> HealthMonitor:
    health = HealthMonitor(
        gateway="edge",
        state_path=tmp_path / "health.json",
        log_dir=tmp_path,
        record=_nothing,
        set_backend=_nothing,  # type: ignore[arg-type]
    )
    # 20 requests to each backend 30 to 40 s ago, 10 in the last 10 s; the canary's fail half of theirs.
    for ago, count in ((35, 20), (5, 10)):
        for n in (1, 2):
            for i in range(count):
                failed = n == 1 and i % 2 == 0
                health.book.record(
                    AccessRecord(
                        msec=NOW - ago,
                        node="n1",
                        status=500 if failed else 200,
                        request_time=0.003,
                        upstream_addr=f"127.0.0.1:{30000 + n}",
                        upstream_status="500" if failed else "200",
                        upstream_response_time="0.003",
                    )
                )
    return health


def test_backends_of_a_serving_canary_get_its_window_with_histograms(tmp_path: Path) -> None:
    health = monitor(tmp_path)
    (service,) = health.report(snapshot(serving_s=12), NOW).services
    assert [b.address for b in service.backends] == ["127.0.0.1:30001", "127.0.0.1:30002"]
    for backend in service.backends:
        assert set(backend.windows) == {"1m", "5m", "1h", CANARY_WINDOW}
        assert set(backend.histograms) == set(backend.windows)
        # Since the canary serves (12 s): only the last requests, not those of 35 s ago.
        assert backend.windows[CANARY_WINDOW].requests == 10
        assert backend.windows["1m"].requests == 30
        assert sum(backend.histograms["1m"]) == 30
    assert service.backends[0].windows[CANARY_WINDOW].availability == 0.5
    later = health.report(snapshot(serving_s=600), NOW).services[0]
    assert later.backends[0].windows[CANARY_WINDOW].requests == 30  # the canary's 60 s window
    # The histograms travel in the report: it stays a plain JSON document.
    assert b'"histograms"' in msgspec.json.encode(later)


def test_without_a_serving_canary_there_is_no_canary_window(tmp_path: Path) -> None:
    health = monitor(tmp_path)
    (service,) = health.report(snapshot(serving_s=None), NOW).services
    assert all(set(b.windows) == {"1m", "5m", "1h"} for b in service.backends)
