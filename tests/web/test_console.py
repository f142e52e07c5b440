"""The web console in a real browser against a real manager: every page loads without a console error,
changes made elsewhere show live, actions change what they say, the API's validation errors show beside
their field, the availability charts show the gateways' figures, and the pages fit a phone's width."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Console
from tests.web.helpers import seed
from treeherd.model.availability import (
    AvailabilityReport,
    BackendAvailability,
    ServiceAvailability,
    WindowStats,
)
from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.transport.client import Client

pytestmark = pytest.mark.browser

# The promise: a change made from the CLI shows within 2 s without a reload.
LIVE_MS = 2_000
PAGES = [
    ("/ui/tree", "Service tree"),
    ("/ui/nodes/corp.web.shop", "corp.web.shop"),
    ("/ui/services", "Services"),
    ("/ui/services/shop", "shop"),
    ("/ui/machines", "Machines"),
    ("/ui/edge", "Edge"),
    ("/ui/events", "Events"),
    ("/ui/domains/shop.example.com", "shop.example.com"),
]


def _live(page: Page) -> None:
    expect(page.locator("#stream-state")).to_have_text("live")


def test_every_page_loads_without_a_console_error(
    manager: ManagerProcess, page: Page, console: Console
) -> None:
    seed(manager.url)
    for path, heading in PAGES:
        page.goto(manager.url + path)
        expect(page.locator("h1")).to_have_text(heading)
        _live(page)
    assert console.errors == []


def test_node_page_shows_inheritance_machines_routes_and_services(
    manager: ManagerProcess, page: Page
) -> None:
    seed(manager.url)
    page.goto(manager.url + "/ui/nodes/corp.web.shop")
    attributes = page.locator("section", has=page.locator("#attrs-h"))
    expect(attributes.locator("tr", has_text="port")).to_contain_text("8080")
    expect(attributes.locator("tr", has_text="port")).to_contain_text("corp.web")
    expect(attributes.locator("tr", has_text="label owner")).to_contain_text("corp")
    machines = page.locator("section", has=page.locator("#machines-h"))
    expect(machines.locator("tr", has_text="web-01")).to_contain_text("5")
    expect(page.locator("#routes")).to_contain_text("shop.example.com/")
    expect(page.locator("section", has=page.locator("#services-h"))).to_contain_text("shop")


def _open(page: Page, name: str) -> None:
    """Expand a tree node (a click on its summary, beside the link to its page)."""
    summary = page.locator("summary", has=page.get_by_role("link", name=name, exact=True))
    summary.locator(".meta").first.click()
    expect(summary.locator("..")).to_have_attribute("open", "")


def test_a_node_added_from_the_cli_appears_without_a_reload(manager: ManagerProcess, page: Page) -> None:
    seed(manager.url)
    page.goto(manager.url + "/ui/tree")
    _live(page)
    _open(page, "corp")
    _open(page, "web")
    expect(page.get_by_role("link", name="shop", exact=True)).to_be_visible()
    subprocess.run(
        [
            *treeherd_command(),
            "--manager",
            manager.url,
            "tree",
            "add",
            "corp.web.cart",
            "--label",
            "team=cart",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    expect(page.get_by_role("link", name="cart", exact=True)).to_be_visible(timeout=LIVE_MS)
    page.goto(manager.url + "/ui/nodes/corp.web")
    _live(page)
    client = Client(manager.url)
    try:
        client.request("PATCH", "/api/v1/nodes/corp.web", {"labels": {"tier": "frontend"}})
    finally:
        client.close()
    expect(page.locator("tr", has_text="label tier")).to_contain_text("frontend", timeout=LIVE_MS)


def test_search_finds_nodes_by_path_and_by_label(manager: ManagerProcess, page: Page) -> None:
    seed(manager.url)
    page.goto(manager.url + "/ui/tree")
    page.get_by_label("Search by path or label").fill("api")
    expect(page.locator("#hits")).to_contain_text("corp.web.api")
    expect(page.locator("#hits")).not_to_contain_text("corp.web.shop")
    page.get_by_label("Search by path or label").fill("tier=web")
    expect(page.locator("#hits a")).to_have_text(["corp.web"])


def test_scale_from_the_page_changes_the_replicas(manager: ManagerProcess, page: Page) -> None:
    seed(manager.url)
    page.goto(manager.url + "/ui/services/shop")
    page.get_by_label("replicas").fill("3")
    page.get_by_role("button", name="scale").click()  # the confirmation is accepted by the fixture
    expect(page.locator("#scale .note")).to_have_text("shop scaled to 3")
    client = Client(manager.url)
    try:
        assert client.get("/api/v1/services/shop", dict)["service"]["replicas"] == 3
    finally:
        client.close()
    expect(page.locator("#replicas")).to_contain_text("/ 3")
    page.get_by_label("replicas").fill("-1")
    page.get_by_role("button", name="scale").click()
    expect(page.locator("#replicas-error")).to_be_visible()


def test_a_refused_route_shows_the_apis_error_beside_its_field(manager: ManagerProcess, page: Page) -> None:
    seed(manager.url)
    client = Client(manager.url)
    try:
        before = client.get("/api/v1/nodes/corp.web.api", dict)
        page.goto(manager.url + "/ui/nodes/corp.web.api")
        page.get_by_label("domain", exact=True).fill("shop.example.com")
        page.get_by_label("uri", exact=True).fill("/")  # corp.web.shop has it already
        page.get_by_role("button", name="add route").click()
        expect(page.locator("#route-uri-error, #route-domain-error")).to_contain_text("shop.example.com")
        assert client.get("/api/v1/nodes/corp.web.api", dict)["version"] == before["version"]
        page.get_by_label("domain", exact=True).fill("nowhere.example.com")
        page.get_by_label("uri", exact=True).fill("/x")
        page.get_by_role("button", name="add route").click()
        expect(page.locator("#route-domain-error")).to_contain_text("nowhere.example.com")
        page.get_by_label("domain", exact=True).fill("shop.example.com")
        page.get_by_label("uri", exact=True).fill("/api/v2")
        page.get_by_role("button", name="add route").click()
        expect(page.locator("#routes .note")).to_have_text("route shop.example.com/api/v2 added")
        routes = client.get("/api/v1/nodes/corp.web.api", dict)["domain_uris"]
        assert sorted(r["uri"] for r in routes) == ["/api", "/api/v2"]
        page.get_by_label("key", exact=True).fill("bad key!")
        page.get_by_label("value", exact=True).fill("x")
        page.get_by_role("button", name="set label").click()
        expect(page.locator("#label-key-error")).to_be_visible()
    finally:
        client.close()


def test_drain_and_activate_a_machine(manager: ManagerProcess, page: Page) -> None:
    seed(manager.url)
    page.goto(manager.url + "/ui/machines")
    row = page.locator("tr[data-machine='web-01']")
    row.get_by_role("button", name="drain web-01").click()
    expect(row.locator(".state-drain")).to_have_text("drain")
    client = Client(manager.url)
    try:
        assert client.get("/api/v1/machines/web-01", dict)["availability"] == "drain"
        row.get_by_role("button", name="active web-01").click()
        expect(row.locator(".state-active")).to_have_text("active")
        assert client.get("/api/v1/machines/web-01", dict)["availability"] == "active"
    finally:
        client.close()


def test_edge_charts_show_the_gateways_figures(manager: ManagerProcess, page: Page, console: Console) -> None:
    seed(manager.url)
    client = Client(manager.url)
    try:
        shop = client.get("/api/v1/nodes/corp.web.shop", dict)
        minute = WindowStats(requests=120, errors=30, availability=0.75, p50_ms=3.0, p99_ms=40.0)
        report = AvailabilityReport(
            gateway="edge-1",
            at=datetime.now(UTC),
            services=[
                ServiceAvailability(
                    node_id=shop["id"],
                    path="corp.web.shop",
                    windows={"1m": minute, "5m": minute, "1h": minute},
                    backends=[
                        BackendAvailability(
                            address="127.0.0.11:8080", hostname="web-01", windows={"1m": minute}
                        )
                    ],
                )
            ],
        )
        client.request("PUT", "/api/v1/availability/edge-1", report)
    finally:
        client.close()
    page.goto(manager.url + "/ui/edge")
    card = page.locator(".chart-card", has_text="service corp.web.shop")
    expect(card.locator("tr[data-window='1m']")).to_contain_text("120")
    expect(card.locator("tr[data-window='1m']")).to_contain_text("75.00 %")
    expect(card.locator("canvas")).to_have_count(1)
    expect(
        page.locator(".chart-card", has_text="backend web-01 127.0.0.11:8080 of corp.web.shop")
    ).to_be_visible()
    expect(page.locator("ol.routes li")).to_have_text(["/api → corp.web.api", "/ → corp.web.shop"])
    assert console.errors == []


@pytest.mark.parametrize("path", [p for p, _ in PAGES])
def test_pages_fit_a_phone_width(manager: ManagerProcess, page: Page, path: str) -> None:
    seed(manager.url)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(manager.url + path)
    expect(page.locator("h1")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_keyboard_reaches_the_content_and_the_sections(manager: ManagerProcess, page: Page) -> None:
    page.goto(manager.url + "/ui/tree")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("a.brand")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Services")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Services")
