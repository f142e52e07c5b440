"""The edge page's availability chart with figures measured by the real nginx gateway of `treeherd up`:
a backend that answers 500 shows as requests with as many 5xx and 0 % availability, for the service and
for the backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.gateway.helpers import Backend, get, route_one_backend
from tests.web.conftest import Console
from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
HOST = "console.test"


def _measured(client: Client) -> dict | None:
    for report in client.get("/api/v1/availability", list):
        for service in report["services"]:
            minute = service["windows"].get("1m", {})
            if service["path"] == "shop" and minute.get("errors", 0) >= 5:
                return minute
    return None


def test_chart_of_a_backend_answering_500(tmp_path: Path, page: Page, console: Console) -> None:
    assert shutil.which("nginx"), "the test suite installs nginx (scripts/system-deps.sh)"
    data = tmp_path / "up"
    domain_port, node_port = free_port(), free_port("127.0.0.7")
    backend = Backend(tmp_path, "web-7", "127.0.0.7", node_port)
    backend.fail(True)
    try:
        with ManagerProcess(data, command=("up",)) as up, Client(up.url, timeout=10) as client:
            route_one_backend(client, HOST, domain_port, node_port)
            wait_for(backend.ready, "the backend to listen", 15)

            def failing() -> bool:
                try:
                    return get(domain_port, "/", HOST)[0] >= 500
                except OSError:
                    return False

            wait_for(failing, "nginx to route to the failing backend", 30)
            for _ in range(20):
                get(domain_port, "/", HOST)
            minute = wait_for(lambda: _measured(client), "the gateway to report the 5xx answers", 30)
            assert minute["availability"] is not None and minute["availability"] < 0.5

            # up serves https and requires a token: the console signs in with the admin's.
            page.goto(up.url + "/ui/edge")
            expect(page).to_have_url(up.url + "/ui/login")
            page.get_by_label("token").fill((data / "secrets" / "admin.token").read_text().strip())
            page.get_by_role("button", name="sign in").click()
            expect(page).to_have_url(up.url + "/ui/tree")
            page.goto(up.url + "/ui/edge")
            card = page.locator(".chart-card", has_text="service shop")
            row = card.locator("tr[data-window='1m']")
            expect(row).to_be_visible(timeout=15_000)
            cells = row.locator("td")
            assert int(cells.nth(0).inner_text()) >= 5  # requests
            assert int(cells.nth(1).inner_text()) >= 5  # 5xx
            expect(page.locator(".chart-card", has_text="backend web-7 ")).to_be_visible()
            expect(card.locator("canvas")).to_have_count(1)
    finally:
        backend.stop()
    assert console.errors == []
