"""The console on a manager that requires authentication: pages lead to the login page, which takes an
API token and checks it; the token then opens the pages, the live stream and the actions its role allows,
and a role that may not act is told so on the page."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Console
from tests.web.helpers import seed
from treeherd.testing.processes import ManagerProcess, treeherd_command

pytestmark = pytest.mark.browser


def _token(url: str, admin: Path, name: str, role: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREEHERD_TOKEN")}
    env["TREEHERD_TOKEN_FILE"] = str(admin)
    made = subprocess.run(
        [*treeherd_command(), "--manager", url, "token", "create", name, "--role", role],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    )
    return made.stdout.strip()


def test_login_with_a_token_and_the_roles_limits(tmp_path: Path, page: Page, console: Console) -> None:
    with ManagerProcess(tmp_path / "data", extra_args=("--require-auth",)) as manager:
        admin_file = tmp_path / "data" / "secrets" / "admin.token"
        admin = admin_file.read_text().strip()
        seed(manager.url, token=admin)
        viewer = _token(manager.url, admin_file, "console-viewer", "viewer")

        page.goto(manager.url + "/ui/tree")
        expect(page).to_have_url(manager.url + "/ui/login")
        page.get_by_label("token").fill("th_not_a_token")
        page.get_by_role("button", name="sign in").click()
        expect(page.locator("#token-error")).to_contain_text("not valid")

        page.get_by_label("token").fill(viewer)
        page.get_by_role("button", name="sign in").click()
        expect(page).to_have_url(manager.url + "/ui/tree")
        expect(page.locator("#stream-state")).to_have_text("live")
        page.goto(manager.url + "/ui/services/shop")
        page.get_by_label("replicas").fill("2")
        page.get_by_role("button", name="scale").click()
        expect(page.locator("#scale + .error")).to_contain_text("the role viewer may not do this")
        page.goto(manager.url + "/ui/nodes/corp.web.api")
        page.locator("#attributes").get_by_label("port").fill("9090")
        page.get_by_role("button", name="save attributes").click()
        expect(page.locator("#attributes + .error")).to_contain_text("the role viewer may not do this")
        page.context.clear_cookies()
        page.goto(manager.url + "/ui/login")
        page.get_by_label("token").fill(admin)
        page.get_by_role("button", name="sign in").click()
        page.goto(manager.url + "/ui/services/shop")
        page.get_by_label("replicas").fill("2")
        page.get_by_role("button", name="scale").click()
        expect(page.locator("#scale .note")).to_have_text("shop scaled to 2")
    # The login page's 401 for the wrong token is the only error the browser reports.
    assert [e for e in console.errors if "401" not in e] == []
