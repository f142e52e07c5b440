"""Helpers of the tests of large task lists (the API's and the console's): a service of many tasks in
an in-memory store, the application on the test's own event loop, and a count of the loop's turns."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import httpx
from litestar import Litestar

from treeherd.manager.inventory import Inventory
from treeherd.manager.services import Services
from treeherd.model.objects import AgentStatus
from treeherd.model.ops import Create
from treeherd.model.requests import NodeCreate, ServiceCreate
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, machine

COUNT = 12_000  # a little over two steps of the row builder (5,000 tasks a step)
STOPPED = COUNT // 10  # every tenth task is shut down: the service's history


async def web_with_tasks(inventory: Inventory, store: MemoryStore) -> Service:
    """Service `web` with COUNT tasks on 10 machines; every tenth is shut down and has a successor.
    Task n is in slot n // 2 + 1 (two tasks a slot: a history row beside a current one) and its
    status is n * 7,919 mod COUNT seconds old: no two alike, in no order of the slots."""
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
                slot=n // 2 + 1,
                machine_id=f"m{n % 10}",
                desired_state=state,
                status=TaskStatus(state=state, timestamp=FIXED_NOW - timedelta(seconds=n * 7_919 % COUNT)),
                spec=service.task,
                spec_version=service.spec_version,
            )
        )
    await store.commit([Create(t) for t in tasks])
    return service


def client_on_this_loop(app: Litestar) -> httpx.AsyncClient:
    """A client of `app` run on the test's own loop (litestar's test client runs it on a loop of its
    own): a `LoopTurns` beside it then counts only the turns the handlers let the loop take."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class LoopTurns:
    """Counts the event loop's turns while entered: a task that counts and yields, again and again, so
    it runs only when what else is on the loop lets it run."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _tick(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)
