"""Log streaming from a real agent through a real dispatcher (memory store, in-memory channels): tail,
follow, a task the agent has no logs of, the reader stopping (the agent is told), and the session ending
under a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from treeherd.agent.agent import Agent
from treeherd.executors.hollow import HollowExecutor
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.service_logs import merge_task_logs
from treeherd.model.errors import Unavailable
from treeherd.model.objects import Machine
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.store.memory import MemoryStore
from treeherd.testing.channels import channel_pair
from treeherd.testing.waiting import eventually

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WAIT = 5.0


class LoggingExecutor(HollowExecutor):
    """Hollow tasks whose "output" is what the test puts in `lines`; follow waits for more."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, list[bytes]] = {}
        self.more = asyncio.Event()
        self.open_streams = 0

    async def logs(self, task_id: str, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        if task_id not in self.lines:
            raise LookupError(task_id)
        self.open_streams += 1
        try:
            lines = self.lines[task_id]
            sent = len(lines) - (tail if tail is not None else len(lines))
            sent = max(sent, 0)
            while True:
                while sent < len(lines):
                    yield lines[sent]
                    sent += 1
                if not follow:
                    return
                self.more.clear()
                await self.more.wait()
        finally:
            self.open_streams -= 1


@pytest.fixture
async def cluster(tmp_path: Path):
    store = MemoryStore()
    await store.open()
    dispatcher = Dispatcher(store, assignment_batch_s=0)
    running = asyncio.create_task(dispatcher.run())
    executor = LoggingExecutor()
    serving: list[asyncio.Task[None]] = []

    async def connect(url: str):
        agent_end, manager_end = channel_pair()
        serving.append(asyncio.create_task(dispatcher.serve(manager_end)))
        return agent_end

    agent = Agent("http://manager", tmp_path / "agent", executor=executor, hostname="web-1", connect=connect)
    agent_running = asyncio.create_task(agent.run())
    await eventually(lambda: store.view().lookup(Machine, "hostname", "web-1") is not None, "registered")
    machine = store.view().lookup(Machine, "hostname", "web-1")
    assert machine is not None
    task = Task(
        id="t1",
        created_at=NOW,
        updated_at=NOW,
        service_id="svc",
        service_name="web",
        slot=1,
        machine_id=machine.id,
        status=TaskStatus(state=TaskState.ASSIGNED, timestamp=NOW),
        spec=TaskSpec(command=["x"]),
    )
    await eventually(lambda: dispatcher.session_id(machine.id) is not None, "session")
    yield dispatcher, executor, agent, task
    agent.stop()
    await asyncio.wait_for(agent_running, WAIT)
    dispatcher.stop()
    await asyncio.wait_for(running, WAIT)
    await asyncio.wait_for(asyncio.gather(*serving, return_exceptions=True), WAIT)
    await store.close()


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    out = b""
    async with asyncio.timeout(WAIT):
        async for chunk in chunks:
            out += chunk
    return out


async def test_tail_and_all(cluster):
    dispatcher, executor, _, task = cluster
    executor.lines["t1"] = [b"one\n", b"two\n", b"three\n"]
    assert await collect(dispatcher.task_logs(task, follow=False, tail=None)) == b"one\ntwo\nthree\n"
    assert await collect(dispatcher.task_logs(task, follow=False, tail=2)) == b"two\nthree\n"


async def test_large_output_arrives_whole(cluster):
    dispatcher, executor, _, task = cluster
    big = bytes(range(256)) * 1000  # 256 KB: split into many chunks on the way
    executor.lines["t1"] = [big]
    assert await collect(dispatcher.task_logs(task, follow=False, tail=None)) == big


async def test_follow_then_the_reader_stops_and_the_agent_stops_reading(cluster):
    dispatcher, executor, agent, task = cluster
    executor.lines["t1"] = [b"first\n"]
    stream = dispatcher.task_logs(task, follow=True, tail=None)
    async with asyncio.timeout(WAIT):
        assert await anext(stream) == b"first\n"
        executor.lines["t1"].append(b"second\n")
        executor.more.set()
        assert await anext(stream) == b"second\n"
    await stream.aclose()  # the reader goes away: the agent is told to stop
    await eventually(lambda: executor.open_streams == 0 and len(agent.logs) == 0, "agent stream stopped")


async def test_a_task_the_agent_has_no_logs_of(cluster):
    dispatcher, _, _, task = cluster
    with pytest.raises(Unavailable, match="no logs of task t1"):
        await collect(dispatcher.task_logs(task, follow=False, tail=None))


async def test_a_task_without_a_live_agent_is_refused_at_once(cluster):
    dispatcher, _, _, task = cluster
    elsewhere = Task(**{**{f: getattr(task, f) for f in task.__struct_fields__}, "machine_id": "gone"})
    with pytest.raises(Unavailable, match="without a live agent"):
        dispatcher.task_logs(elsewhere, follow=False, tail=None)


async def test_the_session_ending_ends_the_stream(cluster):
    dispatcher, executor, agent, task = cluster
    executor.lines["t1"] = [b"first\n"]
    stream = dispatcher.task_logs(task, follow=True, tail=None)
    async with asyncio.timeout(WAIT):
        assert await anext(stream) == b"first\n"
    agent.stop()
    with pytest.raises(Unavailable, match="session ended"):
        async with asyncio.timeout(WAIT):
            await anext(stream)


async def test_service_logs_are_merged_by_line_with_labels(cluster):
    dispatcher, executor, _, task = cluster
    executor.lines["t1"] = [b"a1\na", b"2\n", b"a3"]
    other = Task(**{**{f: getattr(task, f) for f in task.__struct_fields__}, "id": "t2", "slot": 2})
    executor.lines["t2"] = [b"b1\n"]
    lost = Task(**{**{f: getattr(task, f) for f in task.__struct_fields__}, "id": "t3", "machine_id": "x"})
    merged = await collect(
        merge_task_logs(
            [("web.1@h", task), ("web.2@h", other), ("web.3@x", lost)],
            lambda t: dispatcher.task_logs(t, follow=False, tail=None),
        )
    )
    lines = merged.decode().splitlines()
    assert [line for line in lines if line.startswith("web.1@h")] == [
        "web.1@h | a1",
        "web.1@h | a2",
        "web.1@h | a3",
    ]
    assert "web.2@h | b1" in lines
    assert any(
        line.startswith("web.3@x | (no logs: task t3 is on a machine without a live agent") for line in lines
    )
