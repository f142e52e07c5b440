"""The dispatcher's test harness: an in-memory store that can lose a race, a fake clock, in-memory agent
channels, and helpers to read what an agent was sent."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from treeherd.manager.dispatcher import Dispatcher
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Op
from treeherd.model.services import Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import (
    Assignments,
    HeartbeatAck,
    Register,
    SessionStarted,
    TaskStatusUpdate,
)
from treeherd.store.base import Committed
from treeherd.store.memory import MemoryStore
from treeherd.testing import waiting
from treeherd.testing.channels import MemoryChannel, channel_pair
from treeherd.testing.clock import FakeClock
from treeherd.testing.factories import FIXED_NOW, Ids, node

WAIT = 5.0
MANAGER_URL = "http://127.0.0.1:7400"
S = TaskState
M = TypeVar("M")


eventually = functools.partial(waiting.eventually, timeout_s=WAIT, poll_s=0.001)


async def settle() -> None:
    """Let every ready task take its next steps."""
    for _ in range(20):
        await asyncio.sleep(0)


class RacingStore(MemoryStore):
    """A store in which, once armed, another writer's commit lands just before the next task write."""

    def __init__(self) -> None:
        super().__init__()
        self.race: Callable[[], Sequence[Op]] | None = None

    async def commit(self, ops: Sequence[Op]) -> Committed:
        race = self.race
        if race is not None and any(isinstance(op.object, Task) for op in ops):
            self.race = None
            await super().commit(race())
        return await super().commit(ops)


class Harness:
    def __init__(self, store: MemoryStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.ids = Ids("id")
        self.dispatcher: Dispatcher | None = None
        self.running: asyncio.Task[None] | None = None
        self.serving: list[asyncio.Task[None]] = []

    @property
    def d(self) -> Dispatcher:
        assert self.dispatcher is not None
        return self.dispatcher

    async def start(self, managers: Callable[[], list[str]] | None = None) -> Dispatcher:
        self.dispatcher = Dispatcher(
            self.store,
            managers=managers or [MANAGER_URL],
            clock=self.clock.now,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
            rand=lambda: 0.0,  # period 5 s, grace 15 s
            ids=self.ids,
        )
        self.running = asyncio.create_task(self.dispatcher.run())
        await eventually(lambda: self.d._ready.is_set(), "dispatcher ready")
        return self.dispatcher

    async def stop(self) -> None:
        if self.running is not None:
            self.d.stop()
            await asyncio.wait_for(self.running, WAIT)
            self.running = None
        await asyncio.wait_for(asyncio.gather(*self.serving), WAIT)
        self.serving.clear()

    def open(self) -> MemoryChannel:
        agent, manager = channel_pair()
        self.serving.append(asyncio.create_task(self.d.serve(manager, address="10.0.0.9")))
        return agent

    async def connect(
        self, hostname: str = "web-1", **fields: Any
    ) -> tuple[MemoryChannel, SessionStarted, Assignments]:
        """A registered agent: its channel, its session, and the full assignment set it got first."""
        agent = self.open()
        await agent.send(Register(hostname=hostname, **fields))
        started = await receive(agent, SessionStarted)
        full = await receive(agent, Assignments)
        assert full.full and full.sequence == 1
        return agent, started, full

    def machine(self, hostname: str = "web-1") -> Machine:
        found = self.store.view().lookup(Machine, "hostname", hostname)
        assert found is not None
        return found

    def state(self, hostname: str = "web-1") -> str:
        agent = self.machine(hostname).agent
        assert agent is not None
        return agent.state

    def task(self, task_id: str) -> Task:
        found = self.store.view().get(Task, task_id)
        assert found is not None
        return found

    async def service(self) -> None:
        await self.store.commit([Create(node("apps", id="n1"))])
        await self.store.commit(
            [
                Create(
                    Service(
                        id="svc",
                        created_at=FIXED_NOW,
                        updated_at=FIXED_NOW,
                        name="web",
                        node_id="n1",
                        task=TaskSpec(command=["sleep", "60"]),
                    )
                )
            ]
        )

    async def assign(self, task_id: str, machine_id: str, state: TaskState = S.ASSIGNED) -> Task:
        created = Task(
            id=task_id,
            created_at=FIXED_NOW,
            updated_at=FIXED_NOW,
            service_id="svc",
            service_name="web",
            machine_id=machine_id,
            status=TaskStatus(state=state, timestamp=FIXED_NOW),
            spec=TaskSpec(command=["sleep", "60"]),
        )
        committed = await self.store.commit([Create(created)])
        stored = committed.objects[0]
        assert isinstance(stored, Task)
        return stored


async def receive(agent: MemoryChannel, kind: type[M]) -> M:
    """The next message of `kind`, skipping others (heartbeat acks, assignments...)."""

    async def loop() -> M:
        while True:
            message = await agent.receive()
            if isinstance(message, kind):
                return message

    return await asyncio.wait_for(loop(), WAIT)


async def answers(agent: MemoryChannel) -> list[HeartbeatAck]:
    """The heartbeat answers the agent has been sent so far (others are skipped), once the dispatcher
    has settled: none may still be on its way."""
    await settle()
    found: list[HeartbeatAck] = []
    while True:
        try:
            message = await asyncio.wait_for(agent.receive(), 0.05)
        except TimeoutError:
            return found
        if isinstance(message, HeartbeatAck):
            found.append(message)


async def receive_advancing(agent: MemoryChannel, clock: FakeClock, kind: type[M], step: float = 0.05) -> M:
    """The next message of `kind`, moving the fake clock on in small steps while waiting."""

    async def loop() -> M:
        while True:
            try:
                message = await asyncio.wait_for(agent.receive(), 0.01)
            except TimeoutError:
                await clock.advance(step)
                continue
            if isinstance(message, kind):
                return message

    return await asyncio.wait_for(loop(), WAIT)


def drain(agent: MemoryChannel) -> list[Any]:
    """Every message already delivered to the agent."""
    queue: asyncio.Queue[Any] = agent._inbox
    found = []
    while not queue.empty():
        found.append(queue.get_nowait())
    return found


def status(task_id: str, state: TaskState, message: str = "") -> TaskStatusUpdate:
    return TaskStatusUpdate(
        task_id=task_id, status=TaskStatus(state=state, timestamp=FIXED_NOW, message=message)
    )
