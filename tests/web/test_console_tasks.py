"""A service's tasks in the console with a real agent running real processes (`treeherd up`): the task
page shows its story and follows what the task prints as it prints it; the service page lists the tasks
an update replaced as its history."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Console
from treeherd.testing.processes import ManagerProcess
from treeherd.testing.waiting import wait_for
from treeherd.transport.client import Client

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
TICKS = 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.3; done'


def _running(client: Client) -> str | None:
    for task in client.get("/api/v1/services/ticker/tasks", list):
        if task["state"] == "running" and task["desired_state"] == "running":
            return str(task["id"])
    return None


def test_story_live_logs_and_history(tmp_path: Path, page: Page, console: Console) -> None:
    up_args = ("--insecure-http", "--no-gateway")
    with ManagerProcess(tmp_path / "up", command=("up",), extra_args=up_args) as up, Client(up.url) as client:
        client.request("POST", "/api/v1/nodes", {"path": "corp"})
        client.request(
            "POST",
            "/api/v1/services",
            {"name": "ticker", "node": "corp", "replicas": 1, "task": {"command": ["sh", "-c", TICKS]}},
        )
        first = wait_for(lambda: _running(client), "the task to run", 30)
        page.goto(f"{up.url}/ui/tasks/{first}")
        expect(page.locator("#logs")).to_contain_text("tick 2", timeout=10_000)
        # Followed as printed: a later line arrives without a reload.
        expect(page.locator("#logs")).to_contain_text("tick 8", timeout=10_000)
        expect(page.locator("#logs-status")).to_have_text("following")
        story = page.locator("table").first
        expect(story).to_contain_text("running")
        page.get_by_role("button", name="pause").click()
        expect(page.locator("#logs-status")).to_have_text("paused")

        client.request("PATCH", "/api/v1/services/ticker", {"force": True})
        wait_for(lambda: (found := _running(client)) is not None and found != first, "the replacement", 30)
        page.goto(f"{up.url}/ui/services/ticker")
        expect(page.locator("#history")).to_contain_text(first[:12])
    assert console.errors == []
