"""A service's task list through the API: the body is the list as the framework would encode it, the
filter and the unknown service answer as before, and a large list lets the event loop run while it is
made (a list of a million tasks must not keep the manager's heartbeats waiting)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import msgspec
from litestar.testing import AsyncTestClient

from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.objects import AgentStatus
from treeherd.model.ops import Create
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, machine

Client = AsyncTestClient  # type: ignore[type-arg]
TASKS = "/api/v1/services/web/tasks"
COUNT = 12_000  # a little over two steps of the row builder (5,000 tasks a step)


async def web_with_tasks(inventory: Inventory, store: MemoryStore) -> Service:
    """Service `web` with COUNT tasks on 10 machines; every tenth is shut down and has a successor."""
    await inventory.create_node(NodeCreate(path="corp"))
    machines = [machine(f"h{i}", id=f"m{i}", agent=AgentStatus(state="ready")) for i in range(10)]
    await store.commit([Create(m) for m in machines])
    service = await Services(store).create(
        ServiceCreate(name="web", node="corp", replicas=0, task=TaskSpec(command=["serve"]))
    )
    tasks = []
    for n in range(COUNT):
        stopped = n % 10 == 0
        state = TaskState.SHUTDOWN if stopped else TaskState.RUNNING
        tasks.append(
            Task(
                id=f"t{n:06}",
                created_at=FIXED_NOW + timedelta(seconds=n),
                updated_at=FIXED_NOW,
                service_id=service.id,
                service_name="web",
                slot=n // 2 + 1,  # two tasks per slot: a history row beside a current one
                machine_id=f"m{n % 10}",
                desired_state=state,
                status=TaskStatus(state=state, timestamp=FIXED_NOW),
                spec=service.task,
                spec_version=service.spec_version,
            )
        )
    await store.commit([Create(t) for t in tasks])
    return service


async def test_the_body_is_the_list_and_the_loop_runs_meanwhile(
    inventory: Inventory, store: MemoryStore
) -> None:
    await web_with_tasks(inventory, store)
    # The app on this test's own loop (the test client runs it on a loop of its own): the ticker below
    # then runs only when the handler lets the loop run.
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(inventory)), base_url="http://test"
    )
    expected = Services(store).tasks("web")
    assert len(expected) == COUNT and expected[0].slot == 1 and expected[-1].slot == COUNT // 2

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    try:
        async with client:
            response = await client.get(TASKS)
    finally:
        ticking.cancel()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == msgspec.json.encode(expected)  # byte for byte as the framework's encoding
    # Three steps to read the tasks and four to make the rows (6,000 slots and 12,000 rows), each
    # followed by a pause: the loop ran between them. Without the pauses the ticker would not run.
    assert ticks >= 6


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
