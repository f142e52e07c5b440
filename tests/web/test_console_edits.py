"""Editing through the console in a real browser: a node's attributes, machines, Puppet classes and
backend pins, domains, and a service's canary. A refused edit shows the API's error beside its field
and changes nothing; an accepted one is what the API then returns."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Console
from tests.web.helpers import seed
from treeherd.testing.processes import ManagerProcess
from treeherd.transport.client import Client

pytestmark = pytest.mark.browser


def test_node_attributes_machines_and_classes(manager: ManagerProcess, page: Page, console: Console) -> None:
    seed(manager.url)
    with Client(manager.url) as client:
        before = client.get("/api/v1/nodes/corp.web.api", dict)
        page.goto(manager.url + "/ui/nodes/corp.web.api")
        form = page.locator("#attributes")
        form.get_by_label("port").fill("99999")
        form.get_by_role("button", name="save attributes").click()
        expect(page.locator("#attr-port-error")).to_contain_text("port")
        assert client.get("/api/v1/nodes/corp.web.api", dict)["version"] == before["version"]
        form = page.locator("#attributes")
        form.get_by_label("port").fill("9090")
        form.get_by_label("ip_hash").select_option("on")
        form.get_by_role("button", name="save attributes").click()
        expect(page.locator("#attributes .note")).to_have_text("attributes of corp.web.api saved")
        node = client.get("/api/v1/nodes/corp.web.api", dict)
        assert (node["port"], node["ip_hash"]) == (9090, True)

        bind = page.locator("#bind")
        bind.get_by_label("hostname").fill("nowhere-01")
        bind.get_by_role("button", name="bind").click()
        expect(page.locator("#bind-hostname-error")).to_contain_text("nowhere-01")
        page.locator("#bind").get_by_label("hostname").fill("web-01")
        page.locator("#bind").get_by_label("weight").fill("3")
        page.locator("#bind").get_by_role("button", name="bind").click()
        expect(page.locator("#bind .note")).to_have_text("web-01 bound to corp.web.api with weight 3")
        bound = client.get("/api/v1/nodes/corp.web.api/bindings", list)
        assert [(b["hostname"], b["weight"]) for b in bound] == [("web-01", 3)]
        expect(page.locator("tr[data-machine='web-01']")).to_contain_text("3")  # the live part follows

        classes = page.locator("#classes")
        classes.get_by_label("class", exact=True).fill("profile::web")
        classes.get_by_label("parameters (JSON)").fill("{workers: 4")
        classes.get_by_role("button", name="set class").click()
        expect(page.locator("#class-params-error")).to_contain_text("JSON")
        page.locator("#classes").get_by_label("parameters (JSON)").fill('{"workers": 4}')
        page.locator("#classes").get_by_role("button", name="set class").click()
        expect(page.locator("#classes .note")).to_have_text("class profile::web set")
        classes_now = client.get("/api/v1/nodes/corp.web.api", dict)["puppet_classes"]
        assert classes_now == {"profile::web": {"workers": 4}}
        # web-01 is bound to corp.web.shop too, whose classes now differ: the ENC says so.
        page.reload()
        expect(page.locator("section", has=page.locator("#enc-h"))).to_contain_text("(conflict)")
        page.get_by_role("button", name="remove class profile::web").click()
        expect(page.locator("#classes .note")).to_have_text("class profile::web removed")
        assert client.get("/api/v1/nodes/corp.web.api", dict)["puppet_classes"] == {}
    assert console.errors == []


def test_pin_a_backend_and_unbind_a_machine(manager: ManagerProcess, page: Page, console: Console) -> None:
    seed(manager.url)
    with Client(manager.url) as client:
        page.goto(manager.url + "/ui/nodes/corp.web.shop")
        expect(page.locator("#stream-state")).to_have_text("live")
        row = page.locator("tr[data-machine='web-01']")
        row.get_by_role("button", name="pin web-01 out").click()
        expect(page.locator("#machine-result .note")).to_have_text("web-01 pinned out")
        expect(page.locator("tr[data-machine='web-01'] td.pin")).to_have_text("pinned out")
        pins = [b["pin"] for b in client.get("/api/v1/backends", list)]
        assert pins == ["out"]
        page.locator("tr[data-machine='web-01']").get_by_role("button", name="pin web-01 none").click()
        expect(page.locator("tr[data-machine='web-01'] td.pin")).to_have_text("serving")
        assert [b["pin"] for b in client.get("/api/v1/backends", list)] == [None]
        page.locator("tr[data-machine='web-02']").get_by_role("button", name="unbind web-02").click()
        expect(page.locator("tr[data-machine='web-02']")).to_have_count(0)
        bound = client.get("/api/v1/nodes/corp.web.shop/bindings", list)
        assert [b["hostname"] for b in bound] == ["web-01"]
    assert console.errors == []


def test_add_change_and_delete_a_domain(manager: ManagerProcess, page: Page, console: Console) -> None:
    seed(manager.url)
    with Client(manager.url) as client:
        page.goto(manager.url + "/ui/edge")
        add = page.locator("#domain-add")
        add.get_by_label("name").fill("api.example.com")
        add.get_by_label("ports (PORT or PORT:ssl)").fill("8443:ssl")
        add.get_by_role("button", name="add domain").click()
        expect(page.locator("#add-ssl_cert_path-error")).to_contain_text("ssl_cert_path")
        assert [d["name"] for d in client.get("/api/v1/domains", list)] == ["shop.example.com"]
        page.locator("#domain-add").get_by_label("ports (PORT or PORT:ssl)").fill("8081")
        page.locator("#domain-add").get_by_role("button", name="add domain").click()
        expect(page.locator("#domain-add .note")).to_have_text("domain api.example.com added")

        page.goto(manager.url + "/ui/domains/api.example.com")
        edit = page.locator("#domain-edit")
        edit.get_by_label("ports (PORT or PORT:ssl)").fill("80x")
        edit.get_by_role("button", name="save domain").click()
        expect(page.locator("#domain-ports-error")).to_contain_text("80x")
        page.locator("#domain-edit").get_by_label("ports (PORT or PORT:ssl)").fill("8081, 8082")
        page.locator("#domain-edit").get_by_label("access log").fill("/var/log/nginx/api.log")
        page.locator("#domain-edit").get_by_role("button", name="save domain").click()
        expect(page.locator("#domain-edit .note")).to_have_text("domain api.example.com saved")
        found = client.get("/api/v1/domains/api.example.com", dict)
        assert [p["port"] for p in found["ports"]] == [8081, 8082]
        assert found["access_log_path"] == "/var/log/nginx/api.log"

        page.goto(manager.url + "/ui/domains/shop.example.com")
        page.get_by_role("button", name="delete domain").click()
        expect(page.locator("#domain-delete-result .error")).to_contain_text("still routed to by corp.web.")
        page.goto(manager.url + "/ui/domains/api.example.com")
        page.get_by_role("button", name="delete domain").click()
        expect(page.locator("#domain-delete-result .note")).to_have_text("domain api.example.com deleted")
        assert [d["name"] for d in client.get("/api/v1/domains", list)] == ["shop.example.com"]
    assert console.errors == []


def test_start_and_abort_a_canary(manager: ManagerProcess, page: Page, console: Console) -> None:
    seed(manager.url)
    with Client(manager.url) as client:
        page.goto(manager.url + "/ui/services/shop")
        canary = page.locator("#canary")
        canary.get_by_label("environment (KEY=VALUE ...)").fill("VERSION=2")
        canary.get_by_role("button", name="start canary").click()
        # One replica: a canary of one task would leave nothing to compare with.
        expect(page.locator("#canary .error")).to_be_visible()
        assert client.get("/api/v1/services/shop", dict)["service"]["update_status"] is None
        client.request("PATCH", "/api/v1/services/shop", {"replicas": 3})
        page.reload()
        page.locator("#canary").get_by_label("environment (KEY=VALUE ...)").fill("VERSION=2")
        page.locator("#canary").get_by_role("button", name="start canary").click()
        expect(page.locator("#canary")).to_contain_text("A canary runs on 1 task(s)")
        status = client.get("/api/v1/services/shop", dict)["service"]["update_status"]
        assert status["state"] == "canary"
        page.get_by_role("button", name="abort canary").click()
        expect(page.locator("#canary-result .note")).to_contain_text("canary of shop aborted")
        status = client.get("/api/v1/services/shop", dict)["service"]["update_status"]
        assert status["state"] != "canary"
        page.get_by_role("button", name="promote canary").click()
        expect(page.locator("#canary-result .error")).to_be_visible()
    assert console.errors == []


def test_an_edit_by_keyboard_alone(manager: ManagerProcess, page: Page) -> None:
    """Tab to a field, type, Enter: the form is sent (after the confirmation) and says what changed."""
    seed(manager.url)
    page.goto(manager.url + "/ui/nodes/corp.web.api")
    page.locator("#attr-port").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#attr-port")).to_be_focused()
    page.keyboard.type("9091")
    page.keyboard.press("Enter")
    expect(page.locator("#attributes .note")).to_have_text("attributes of corp.web.api saved")
    with Client(manager.url) as client:
        assert client.get("/api/v1/nodes/corp.web.api", dict)["port"] == 9091
