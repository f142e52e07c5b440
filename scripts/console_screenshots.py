"""Screenshots of every page of the web console, for the README (docs/screenshots/*.png).

Starts `treeherd up --demo` (manager, agent and, with nginx installed, the edge gateway) in a temporary
directory on loopback, moves the demo's domains to free ports, sends some requests through the gateway
(GETs that the demo's tasks answer, POSTs they answer 501, and the bound machines that do not listen),
then photographs each page in Debian's chromium at 1280 px, and the node page at a phone's width.

    .venv/bin/python scripts/console_screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from treeherd.testing.ports import free_port
from treeherd.testing.processes import ManagerProcess, reap_processes_under
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

CHROMIUM = "/usr/bin/chromium"


def _request(port: int, method: str, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers={"Host": host, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def _measured(client: Client) -> bool:
    return any(
        s["windows"].get("1m", {}).get("requests", 0) > 0
        for report in client.get("/api/v1/availability", list)
        for s in report["services"]
    )


def _shoot(page: Page, out: Path, name: str, url: str, settle_ms: int = 800) -> None:
    page.goto(url)
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"{out / name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="treeherd-shots-") as tmp:
        data = Path(tmp) / "up"
        try:
            with (
                # Plain http: no sign-in page in the way, and no client context written for it.
                ManagerProcess(data, command=("up",), extra_args=("--demo", "--insecure-http")) as up,
                Client(up.url) as client,
            ):
                shop_port, api_port = free_port(), free_port()
                client.request("PATCH", "/api/v1/domains/shop.example.com", {"ports": [{"port": shop_port}]})
                client.request("PATCH", "/api/v1/domains/api.corp.internal", {"ports": [{"port": api_port}]})
                wait_for(lambda: _request(shop_port, "GET", "shop.example.com") == 200, "the gateway", 60)
                for index in range(120):
                    _request(shop_port, "POST" if index % 6 == 0 else "GET", "shop.example.com")
                    _request(api_port, "GET", "api.corp.internal")
                wait_for(lambda: _measured(client), "the gateway's figures", 60)
                with sync_playwright() as driver:
                    browser = driver.chromium.launch(
                        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                    )
                    try:
                        page = browser.new_page(viewport={"width": 1280, "height": 800})
                        page.goto(up.url + "/ui/tree")
                        for name in ("corp", "web"):
                            summary = page.locator(
                                "summary", has=page.get_by_role("link", name=name, exact=True)
                            )
                            summary.locator(".meta").first.click()
                            page.wait_for_timeout(300)
                        page.screenshot(path=str(out / "tree.png"), full_page=True)
                        print(out / "tree.png")
                        _shoot(page, out, "node", up.url + "/ui/nodes/corp.web.frontend")
                        _shoot(page, out, "services", up.url + "/ui/services")
                        _shoot(page, out, "service", up.url + "/ui/services/frontend")
                        tasks = client.get("/api/v1/services/frontend/tasks", list)
                        task = next(t["id"] for t in tasks if t["state"] == "running")
                        _shoot(page, out, "task", up.url + f"/ui/tasks/{task}", settle_ms=2000)
                        _shoot(page, out, "machines", up.url + "/ui/machines")
                        _shoot(page, out, "domain", up.url + "/ui/domains/shop.example.com")
                        page.goto(up.url + "/ui/edge")
                        for _ in range(5):  # a few points on the charts, 2 s apart
                            for index in range(30):
                                _request(shop_port, "POST" if index % 4 == 0 else "GET", "shop.example.com")
                            page.wait_for_timeout(2000)
                        page.screenshot(path=str(out / "edge.png"), full_page=True)
                        print(out / "edge.png")
                        page.goto(up.url + "/ui/events")
                        page.wait_for_timeout(500)
                        client.request("PATCH", "/api/v1/services/frontend", {"replicas": 3})
                        client.request(
                            "POST", "/api/v1/nodes", {"path": "corp.web.cart", "labels": {"team": "cart"}}
                        )
                        page.wait_for_timeout(2500)
                        page.screenshot(path=str(out / "events.png"), full_page=True)
                        print(out / "events.png")
                        phone = browser.new_page(viewport={"width": 390, "height": 844})
                        _shoot(phone, out, "node-phone", up.url + "/ui/nodes/corp.web.frontend")
                    finally:
                        browser.close()
        finally:
            time.sleep(0.5)
            reap_processes_under(Path(tmp))


if __name__ == "__main__":
    main()
