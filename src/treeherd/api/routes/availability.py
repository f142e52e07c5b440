"""/api/v1/availability and /metrics: what the gateways measured, as JSON and in Prometheus's text
exposition format (hand-written: a few gauges need no client library). The JSON adds to each service
its backends grouped by the spec version of the task each one is (`core.edge.canary_windows`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec
from litestar import Controller, Response, get, put
from litestar.params import Parameter

from treeherd.core.edge.canary_windows import by_version, canary_versions, task_versions
from treeherd.core.edge.proxy_records import firing_alerts
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.inventory import Inventory
from treeherd.model.availability import AvailabilityReport, ServiceAvailability, WindowStats
from treeherd.model.errors import Refused
from treeherd.model.gateway import GatewayRecord
from treeherd.model.proxies import Alert, ProxyRecord

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """One gateway's last report; `stale` when it has not reported for a minute."""

    gateway: str
    at: datetime
    stale: bool
    services: list[ServiceAvailability]


def _under(path: str, prefix: str | None) -> bool:
    return prefix is None or path == prefix or path.startswith(prefix + ".")


class AvailabilityController(Controller):
    path = "/api/v1/availability"
    tags = ["availability"]

    @get(
        "/",
        summary="Availability per service, backend and spec version over 1 min, 5 min and 1 h (and a"
        " canary's window)",
    )
    async def availability(
        self,
        board: AvailabilityBoard,
        inventory: Inventory,
        path: str | None = Parameter(default=None, description="only this node and its subtree"),
    ) -> list[GatewayAvailability]:
        view = inventory.store.view()
        versions = task_versions(view)
        canaries = canary_versions(view)
        return [
            GatewayAvailability(
                gateway=report.gateway,
                at=report.at,
                stale=stale,
                services=[
                    msgspec.structs.replace(s, versions=by_version(s, versions, canaries))
                    for s in report.services
                    if _under(s.path, path)
                ],
            )
            for report, stale in board.reports()
        ]

    @put(
        "/{gateway:str}",
        summary="A gateway's report (sent by the gateway every few seconds)",
        status_code=204,
    )
    async def put_report(self, board: AvailabilityBoard, gateway: str, data: AvailabilityReport) -> None:
        if data.gateway != gateway:  # the URL and the body disagree: a conflict, not a malformed body
            raise Refused(
                f"the report is from gateway {data.gateway!r} but was sent for {gateway!r}", field="gateway"
            )
        board.put(data)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


class _Metric:
    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self.samples: list[str] = []

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append(f"{self.name}{_labels(**labels)} {value:g}")

    def text(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n" + "".join(
            sample + "\n" for sample in self.samples
        )


def _window(metrics: dict[str, _Metric], prefix: str, stats: WindowStats, **labels: str) -> None:
    metrics[f"{prefix}requests"].add(stats.requests, **labels)
    metrics[f"{prefix}errors"].add(stats.errors, **labels)
    metrics[f"{prefix}availability"].add(stats.availability, **labels)
    for quantile, value in (("0.5", stats.p50_ms), ("0.9", stats.p90_ms), ("0.99", stats.p99_ms)):
        metrics[f"{prefix}latency_ms"].add(value, **labels, quantile=quantile)


def prometheus_text(board: AvailabilityBoard, revision: int, crash_loops: Sequence[Alert] = ()) -> str:
    metrics: dict[str, _Metric] = {}
    for prefix, what in (("treeherd_service_", "a service"), ("treeherd_backend_", "a backend")):
        metrics[f"{prefix}requests"] = _Metric(f"{prefix}requests", f"Requests to {what} over the window.")
        metrics[f"{prefix}errors"] = _Metric(
            f"{prefix}errors", f"Requests to {what} answered with 5xx over the window."
        )
        metrics[f"{prefix}availability"] = _Metric(
            f"{prefix}availability", f"Share of requests to {what} not answered with 5xx over the window."
        )
        metrics[f"{prefix}latency_ms"] = _Metric(
            f"{prefix}latency_ms", f"Latency percentiles of {what}, in ms."
        )
    alert = _Metric("treeherd_alert_firing", "1 while the availability alert of a service fires.")
    stale = _Metric("treeherd_gateway_report_stale", "1 when a gateway has not reported for a minute.")
    store = _Metric("treeherd_store_revision", "The store's revision.")
    store.add(revision)
    looping = _Metric("treeherd_proxy_crash_loop", "1 while a proxy master is in a crash loop.")
    for loop in crash_loops:
        looping.add(1, source=loop.source, proxy=loop.subject)
    for report, is_stale in board.reports():
        stale.add(int(is_stale), gateway=report.gateway)
        for service in report.services:
            alert.add(int(service.alert is not None), gateway=report.gateway, path=service.path)
            for window, stats in service.windows.items():
                _window(
                    metrics,
                    "treeherd_service_",
                    stats,
                    gateway=report.gateway,
                    path=service.path,
                    window=window,
                )
            for backend in service.backends:
                for window, stats in backend.windows.items():
                    _window(
                        metrics,
                        "treeherd_backend_",
                        stats,
                        gateway=report.gateway,
                        path=service.path,
                        backend=backend.address,
                        hostname=backend.hostname,
                        window=window,
                    )
    return "".join(m.text() for m in [*metrics.values(), alert, looping, stale, store])


@get(
    "/metrics",
    summary="Prometheus metrics: availability, latency, alerts",
    tags=["system"],
    media_type=PROMETHEUS_TYPE,
)
async def metrics(board: AvailabilityBoard, inventory: Inventory) -> Response[str]:
    view = inventory.view
    loops = firing_alerts(view.all(GatewayRecord), view.all(ProxyRecord), ())
    return Response(prometheus_text(board, inventory.store.revision, loops), media_type=PROMETHEUS_TYPE)
