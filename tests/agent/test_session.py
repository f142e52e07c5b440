"""The session with a (fake) manager over in-memory channels, and the whole agent on top of it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from agent_helpers import FakeManager, channel_pair, eventually, make_task

from treeherd.agent import Agent
from treeherd.agent.session import Session
from treeherd.executors.hollow import HollowExecutor
from treeherd.model.states import TaskState as S
from treeherd.model.wire import Assignments, Register, SessionRefused, StatusReport, TaskStatusUpdate
from treeherd.transport.channel import ChannelClosed


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def session_started(self, session_id: str) -> None:
        self.calls.append(("started", session_id))

    def session_lost(self, reason: str) -> None:
        self.calls.append(("lost", reason))

    def assignments(self, message: Assignments) -> None:
        self.calls.append(("assignments", message.sequence))

    def acknowledged(self, report_id: int) -> None:
        self.calls.append(("ack", report_id))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def register() -> Register:
    return Register(hostname="node-1", labels={"rack": "r1"}, cpus=4, memory_bytes=8 << 30)


@asynccontextmanager
async def session_with(
    manager: FakeManager, *, silence_factor: float = 3.0
) -> AsyncIterator[tuple[Session, Listener]]:
    listener = Listener()
    session = Session(
        "http://manager",
        register,
        listener,
        connect=manager.connect,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        connect_timeout_s=1.0,
        silence_factor=silence_factor,
    )
    run = asyncio.create_task(session.run())
    try:
        yield session, listener
    finally:
        session.stop()
        async with asyncio.timeout(3):
            await run
        await manager.close()


async def test_register_then_heartbeats_and_assignments() -> None:
    manager = FakeManager(heartbeat_period_s=0.02)
    async with session_with(manager) as (session, listener):
        await eventually(lambda: manager.heartbeats >= 2, "two heartbeats")
        assert manager.registers == [register()]
        assert listener.calls[:2] == [("started", "s1"), ("assignments", 1)]
        assert (session.session_id, session.machine_id) == ("s1", "m-1")
        await manager.assign(updated=[make_task("t1")])
        await eventually(lambda: ("assignments", 2) in listener.calls)


async def test_reports_go_out_with_the_session_id_and_acks_come_back() -> None:
    manager = FakeManager()
    async with session_with(manager) as (session, listener):
        await eventually(lambda: session.session_id == "s1")
        update = TaskStatusUpdate(task_id="t1", status=make_task("t1").status)
        await session.send_report(7, [update])
        await eventually(lambda: ("ack", 7) in listener.calls)
        assert manager.reports == [StatusReport(session_id="s1", updates=[update], report_id=7)]


async def test_without_a_session_a_report_cannot_be_sent() -> None:
    session = Session("http://manager", register, Listener(), connect=FakeManager().connect)
    with pytest.raises(ChannelClosed):
        await session.send_report(1, [])


async def test_a_broken_connection_is_redialled() -> None:
    manager = FakeManager()
    async with session_with(manager) as (session, listener):
        await eventually(lambda: session.sessions == 1)
        await manager.drop()
        await eventually(lambda: session.sessions == 2, "a second session")
        assert listener.kinds()[:4] == ["started", "assignments", "lost", "started"]


async def test_an_unreachable_manager_is_retried_with_backoff() -> None:
    manager = FakeManager()
    manager.reachable = False
    async with session_with(manager) as (session, listener):
        await eventually(lambda: manager.dials >= 3, "three dials")
        assert listener.calls == []
        manager.reachable = True
        await eventually(lambda: session.sessions == 1, "a session once reachable")


async def test_a_refused_session_is_retried() -> None:
    manager = FakeManager()
    manager.refuse = 2
    async with session_with(manager) as (session, listener):
        await eventually(lambda: session.sessions == 1)
        assert len(manager.registers) == 3
        assert listener.kinds()[0] == "started"  # refusals are not sessions: nothing was lost


async def test_stop_ends_the_dialing_even_when_a_cancellation_is_swallowed() -> None:
    # Python 3.11's asyncio.wait_for can lose a cancellation that arrives as the awaited call
    # finishes; a dial that does so must not keep the session dialing after stop().
    dials = 0

    async def swallowing_connect(url: str) -> FakeManager:
        nonlocal dials
        dials += 1
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass
        raise OSError("connection refused")

    session = Session(
        "http://manager",
        register,
        Listener(),
        connect=swallowing_connect,  # type: ignore[arg-type]
        backoff_initial_s=0.01,
        backoff_max_s=0.01,
        connect_timeout_s=30.0,
    )
    run = asyncio.create_task(session.run())
    await eventually(lambda: dials == 1, "a dial under way")
    session.stop()
    async with asyncio.timeout(5):
        await run
    assert dials == 1


async def test_an_increment_out_of_sequence_starts_a_new_session() -> None:
    manager = FakeManager()
    async with session_with(manager) as (session, listener):
        await eventually(lambda: session.sessions == 1)
        manager._sequence += 1  # a message went missing
        await manager.assign(updated=[make_task("t1")])
        await eventually(lambda: session.sessions == 2, "a new session")
        assert ("assignments", 3) not in listener.calls
        assert any(kind == "lost" and "out of sequence" in str(why) for kind, why in listener.calls)


async def test_a_silent_manager_ends_the_session() -> None:
    manager = FakeManager(heartbeat_period_s=0.02)
    manager.answer_heartbeats = False
    async with session_with(manager, silence_factor=3) as (session, listener):
        await eventually(lambda: session.sessions >= 2, "a new session after silence")
        assert ("lost", "the manager went silent") in listener.calls


async def test_silence_is_the_limit_at_least_and_a_talking_manager_keeps_the_session() -> None:
    # Heartbeats every 0.05 s, silence limit three periods: the session ends a limit after the last ack.
    manager = FakeManager(heartbeat_period_s=0.05)
    async with session_with(manager, silence_factor=3) as (session, listener):
        await eventually(lambda: session.sessions == 1, "a session")
        await asyncio.sleep(0.6)  # four limits, with acks all along
        assert session.sessions == 1 and "lost" not in listener.kinds()
        manager.answer_heartbeats = False
        silent_from = time.monotonic()  # at most one period (0.05 s) after the last ack
        await eventually(lambda: "lost" in listener.kinds(), "the session ends")
        assert time.monotonic() - silent_from >= 0.15 - 0.05
        assert ("lost", "the manager went silent") in listener.calls


def test_backoff_is_bounded_and_jittered() -> None:
    session = Session(
        "u", register, Listener(), backoff_initial_s=0.5, backoff_max_s=30, rng=random.Random(1)
    )
    assert 0.25 <= session.backoff(0) <= 0.5
    assert 0.5 <= session.backoff(1) <= 1.0
    delays = {session.backoff(100) for _ in range(20)}
    assert all(15 <= d <= 30 for d in delays) and len(delays) > 1


# --- the whole agent ----------------------------------------------------------------------------


@asynccontextmanager
async def running_agent(manager: FakeManager, data_dir: Path) -> AsyncIterator[Agent]:
    agent = Agent(
        "http://manager",
        data_dir,
        executor=HollowExecutor(),
        hostname="node-1",
        labels={"rack": "r1"},
        connect=manager.connect,
        grace_s=1.0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    run = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop()
        async with asyncio.timeout(3):
            await run
        await manager.close()


async def test_the_agent_runs_its_assignments_and_keeps_them_through_a_reconnect(tmp_path: Path) -> None:
    manager = FakeManager(tasks=[make_task("t1"), make_task("t2")])
    async with running_agent(manager, tmp_path) as agent:
        await eventually(lambda: manager.states("t1")[-1:] == manager.states("t2")[-1:] == [S.RUNNING])
        register = manager.registers[0]
        assert (register.hostname, register.labels) == ("node-1", {"rack": "r1"})
        assert register.cpus > 0 and register.memory_bytes > 0

        manager.tasks = [make_task("t2")]  # t1 is no longer assigned when the agent comes back
        await manager.drop()
        await eventually(lambda: agent.session.sessions == 2, "reconnected")
        executor = agent.executor
        assert isinstance(executor, HollowExecutor)
        await eventually(lambda: executor.controllers["t1"].removed, "t1 removed after the full set")
        assert "shutdown" not in executor.controllers["t2"].calls  # kept running across the reconnect


async def test_an_agent_restart_resumes_tasks_from_its_local_db(tmp_path: Path) -> None:
    manager = FakeManager(tasks=[make_task("t1")])
    async with running_agent(manager, tmp_path):
        await eventually(lambda: manager.states("t1")[-1:] == [S.RUNNING])

    manager = FakeManager(tasks=[make_task("t1")])
    manager.reachable = False  # the manager is away: the task is resumed anyway
    async with running_agent(manager, tmp_path) as agent:
        executor = agent.executor
        assert isinstance(executor, HollowExecutor)
        await eventually(
            lambda: "t1" in executor.controllers and executor.controllers["t1"].calls == ["wait"]
        )
        manager.reachable = True
        await eventually(lambda: manager.states("t1") == [S.RUNNING], "the status said again")


async def test_several_managers_are_tried_in_turn_and_a_follower_sends_the_agent_to_the_leader() -> None:
    leader = FakeManager()
    dialed: list[str] = []

    async def follower(url: str) -> object:
        agent_end, manager_end = channel_pair()

        async def refuse() -> None:
            await manager_end.receive()
            await manager_end.send(
                SessionRefused(
                    code="not_leader", detail="not the leader", retry_after_s=0.01, leader="http://c"
                )
            )

        refusals.append(asyncio.create_task(refuse()))
        return agent_end

    refusals: list[asyncio.Task[None]] = []

    async def connect(url: str) -> object:
        dialed.append(url)
        if url == "http://a":
            raise OSError("connection refused")
        if url == "http://b":
            return await follower(url)
        return await leader.connect(url)

    listener = Listener()
    session = Session(
        "http://a,http://b,http://c",
        register,
        listener,
        connect=connect,  # type: ignore[arg-type]
        backoff_initial_s=5.0,  # a backoff would outlast the test: the managers are tried without one
        connect_timeout_s=1.0,
    )
    run = asyncio.create_task(session.run())
    try:
        await eventually(lambda: session.sessions == 1, "a session with the leader")
        assert dialed == ["http://a", "http://b", "http://c"]
        assert session.url == "http://c"
    finally:
        session.stop()
        async with asyncio.timeout(3):
            await run
        await leader.close()
        for task in refusals:
            task.cancel()


async def test_a_heartbeat_ack_naming_the_managers_updates_the_agents_list() -> None:
    manager = FakeManager()
    session = Session("http://a", register, Listener(), connect=manager.connect, connect_timeout_s=1.0)  # type: ignore[arg-type]
    run = asyncio.create_task(session.run())
    try:
        await eventually(lambda: session.sessions == 1, "a session")
        assert session.managers == ["http://a"]
        manager.told_managers = ["http://a", "http://b", "http://c"]  # two managers joined
        await eventually(lambda: session.managers == ["http://a", "http://b", "http://c"], "the new list")
    finally:
        session.stop()
        async with asyncio.timeout(3):
            await run
        await manager.close()
