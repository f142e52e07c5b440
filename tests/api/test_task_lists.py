"""A service's task list through the API: the body is the list as the framework would encode it, the
filter and the unknown service answer as before, and a large list lets the event loop run while it is
made (a list of a million tasks must not keep the manager's heartbeats waiting)."""

from __future__ import annotations

import msgspec
from litestar.testing import AsyncTestClient
from tests.api.helpers import COUNT, LoopTurns, client_on_this_loop, web_with_tasks

from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.ops import Delete
from treeherd.model.requests import NodeCreate
from treeherd.model.services import Task
from treeherd.store.memory import MemoryStore

Client = AsyncTestClient  # type: ignore[type-arg]
TASKS = "/api/v1/services/web/tasks"


async def test_the_body_is_the_list_and_the_loop_runs_meanwhile(
    inventory: Inventory, store: MemoryStore
) -> None:
    await web_with_tasks(inventory, store)
    client = client_on_this_loop(create_app(inventory))
    expected = Services(store).tasks("web")
    assert len(expected) == COUNT and expected[0].slot == 1 and expected[-1].slot == COUNT // 2

    async with client, LoopTurns() as turns:
        response = await client.get(TASKS)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == msgspec.json.encode(expected)  # byte for byte as the framework's encoding
    # Three steps to read the tasks and four to make the rows (6,000 slots and 12,000 rows), each
    # followed by a pause: the loop ran between them. Without the pauses the loop would not turn.
    assert turns.count >= 6


async def test_current_tasks_only_and_an_unknown_service(
    client: Client, inventory: Inventory, store: MemoryStore
) -> None:
    await web_with_tasks(inventory, store)
    current = (await client.get(TASKS, params={"all": "false"})).json()
    assert len(current) == COUNT - COUNT // 10 and {row["desired_state"] for row in current} == {"running"}

    missing = await client.get("/api/v1/services/nope/tasks")
    assert missing.status_code == 404
    assert missing.json()["field"] == "name" and "nope" in missing.json()["detail"]


async def test_a_service_with_no_tasks_is_an_empty_list(client: Client, inventory: Inventory) -> None:
    await inventory.create_node(NodeCreate(path="corp"))
    await client.post(
        "/api/v1/services", json={"name": "web", "node": "corp", "replicas": 0, "task": {"command": ["x"]}}
    )
    response = await client.get(TASKS)
    assert response.status_code == 200 and response.json() == []


async def test_tasks_removed_while_the_list_is_made_are_left_out(
    inventory: Inventory, store: MemoryStore
) -> None:
    service = await web_with_tasks(inventory, store)
    view = store.view()
    steps = Services(store)._row_steps("web", True)
    assert next(steps) == []  # the first step read the first 5,000 tasks; the others are not read yet
    not_read = view.referrer_ids(Task, "service", service.id)[5_000:5_100]
    await store.commit([Delete(task) for id in not_read if (task := view.get(Task, id)) is not None])
    rows = [row for rows in steps for row in rows]
    assert len(rows) == COUNT - 100
    assert not {row.id for row in rows} & set(not_read)
