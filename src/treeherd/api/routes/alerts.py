"""/api/v1/alerts and /api/v1/proxies: every firing alert in one list (availability alerts of the
gateways, crash loops of the gateway's nginx and of the agents' haproxy), and the hosts' proxy records
(what happened to each local haproxy: restarts with their cause, crash loops)."""

from __future__ import annotations

from litestar import Controller, get

from treeherd.core.edge.proxy_records import firing_alerts
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import NotFound
from treeherd.model.gateway import GatewayRecord
from treeherd.model.proxies import Alert, ProxyRecord


class AlertController(Controller):
    path = "/api/v1"
    tags = ["alerts"]

    @get("/alerts", summary="Firing alerts: services' availability and proxies' crash loops")
    async def alerts(self, inventory: Inventory, board: AvailabilityBoard) -> list[Alert]:
        view = inventory.view
        services = [(report.gateway, service) for report, _ in board.reports() for service in report.services]
        return firing_alerts(view.all(GatewayRecord), view.all(ProxyRecord), services)

    @get("/proxies", summary="Hosts' local proxies and their recent events")
    async def list_proxies(self, inventory: Inventory) -> list[ProxyRecord]:
        return sorted(inventory.view.all(ProxyRecord), key=lambda p: p.hostname)

    @get("/proxies/{hostname:str}", summary="One host's local proxy and its recent events")
    async def get_proxy(self, inventory: Inventory, hostname: str) -> ProxyRecord:
        record = inventory.view.lookup(ProxyRecord, "hostname", hostname.strip().lower())
        if record is None:
            raise NotFound(
                f"no proxy event was reported from {hostname!r}: its agent's haproxy has not been restarted"
                " (hosts with events: treeherd proxy ls)",
                field="hostname",
            )
        return record
