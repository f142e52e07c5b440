"""Browser fixtures: Debian's chromium driven by Playwright (launched from /usr/bin/chromium: nothing is
downloaded), closed after every test, with every console error and page error of the pages it opened
collected for the test to check. The manager the pages talk to is the suite's `manager` fixture."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psutil
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _chromium_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (scripts/system-deps.sh installs Debian's chromium)")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
    left = _chromium_children()
    for process in left:
        process.kill()
    assert not left, f"chromium processes left running: {[p.pid for p in left]}"


class Console:
    """The console messages of type error and the uncaught errors of the pages opened with it."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A 1280 px wide page whose confirmation dialogs are accepted (each action asks before it acts)."""
    # https managers (`treeherd up`) have a certificate of their own cluster CA, which chromium does not know.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    opened = context.new_page()
    console.watch(opened)
    opened.on("dialog", lambda dialog: dialog.accept())
    opened.set_default_timeout(10_000)
    try:
        yield opened
    finally:
        context.close()
