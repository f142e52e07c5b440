"""A service's console page with many tasks, served on the test's own loop (no browser): it shows a
bounded number of its current tasks and says how to list them all, keeps its newest history with the
exact counts, and lets the event loop run while it is made (the page of a service of a million tasks
must not keep the manager's heartbeats waiting)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

from tests.api.helpers import COUNT, STOPPED, LoopTurns, client_on_this_loop, web_with_tasks
from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import TaskSpec
from treeherd.model.tasks_view import TaskRow
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW
from treeherd.web import console_handlers, queries
from treeherd.web.pages import CURRENT_SHOWN, HISTORY

TASK_LINK = re.compile(r'href="/ui/tasks/([^"]+)"')


async def test_a_large_service_shows_a_bounded_page_and_the_loop_runs_meanwhile(
    inventory: Inventory, store: MemoryStore
) -> None:
    await web_with_tasks(inventory, store)
    services = Services(store)
    current = [row.id for row in services.tasks("web", all_tasks=False)]
    earlier = sorted(
        (row for row in services.tasks("web") if row.id not in set(current)),
        key=lambda row: row.since,
        reverse=True,
    )
    assert len(current) == COUNT - STOPPED and len(earlier) == STOPPED

    client = client_on_this_loop(create_app(inventory, extra_handlers=console_handlers()))
    async with client, LoopTurns() as turns:
        response = await client.get("/ui/services/web")
    assert response.status_code == 200, response.text
    tasks_part, history_part = response.text.split('id="history-h"')

    # The first current tasks by slot, and what is not shown said with how to see it all.
    assert TASK_LINK.findall(tasks_part) == current[:CURRENT_SHOWN]
    hidden = len(current) - CURRENT_SHOWN
    assert (
        f"the first {CURRENT_SHOWN} of {len(current)} current tasks by slot; {hidden} not shown" in tasks_part
    )
    assert "treeherd service ps web --current" in tasks_part
    assert "GET /api/v1/services/web/tasks?all=false" in tasks_part
    # The summary stays exact: every current task of the fixture is running.
    assert f"{len(current)} / 0</span> running" in tasks_part

    # The newest earlier tasks, newest first, and how many there are.
    assert TASK_LINK.findall(history_part) == [row.id for row in earlier[:HISTORY]]
    assert f"the latest {HISTORY} of {STOPPED} kept" in history_part

    # Three steps to read the tasks and four to make the rows, each followed by a pause: the loop turned
    # between them (seven times). Made in one synchronous pass, the page lets it turn not once.
    assert turns.count >= 6


async def test_a_small_service_and_an_unknown_one(inventory: Inventory, store: MemoryStore) -> None:
    await inventory.create_node(NodeCreate(path="corp"))
    await Services(store).create(
        ServiceCreate(name="web", node="corp", replicas=0, task=TaskSpec(command=["serve"]))
    )
    async with client_on_this_loop(create_app(inventory, extra_handlers=console_handlers())) as client:
        empty = await client.get("/ui/services/web")
        missing = await client.get("/ui/services/nope")
    assert empty.status_code == 200
    assert "no task" in empty.text and "no earlier task kept" in empty.text
    assert "not shown" not in empty.text
    assert missing.status_code == 404 and "nope" in missing.text


def _row(n: int, desired_state: str, minutes: int) -> TaskRow:
    return TaskRow(
        id=f"t{n}",
        service="web",
        slot=n,
        hostname=None,
        desired_state=desired_state,
        state=desired_state,
        since=FIXED_NOW + timedelta(minutes=minutes),
        message="",
        error="",
        placement_error="",
        ports={},
        spec_version=1,
        cause="",
        restart_at=None,
    )


async def test_the_newest_earlier_tasks_are_those_of_one_sort_ties_in_the_pages_order() -> None:
    # Desired states as rows name them: "ready" and "running" are meant to run, the others not. Times
    # of three values only: many ties, across pages.
    states = ("running", "shutdown", "ready", "complete", "failed")
    rows = [_row(n, states[n % 5], minutes=n * 7 % 3) for n in range(60)]

    async def pages() -> AsyncIterator[list[TaskRow]]:
        for start in range(0, len(rows), 7):
            yield rows[start : start + 7]

    found = await queries.service_tasks(pages(), shown=5, history=9)
    meant = [r for r in rows if r.desired_state in ("running", "ready")]
    earlier = [r for r in rows if r not in meant]
    assert found.current == meant[:5] and found.current_count == len(meant) == 24
    assert found.history == sorted(earlier, key=lambda r: r.since, reverse=True)[:9]
    assert found.history_count == len(earlier) == 36
