"""Helpers of the agent tests: tasks, bounded polling, a scripted controller, a fake manager."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import Any

from treeherd.executors.base import Exit
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import (
    Assignments,
    Heartbeat,
    HeartbeatAck,
    Register,
    SessionRefused,
    SessionStarted,
    StatusAck,
    StatusReport,
    TaskStatusUpdate,
)
from treeherd.testing import waiting
from treeherd.testing.channels import MemoryChannel, channel_pair
from treeherd.transport.channel import ChannelClosed

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make_task(
    id: str,
    *,
    desired: TaskState = TaskState.RUNNING,
    state: TaskState = TaskState.ASSIGNED,
    env: dict[str, str] | None = None,
) -> Task:
    return Task(
        id=id,
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-1",
        service_name="web",
        machine_id="m-1",
        desired_state=desired,
        status=TaskStatus(state=state, timestamp=NOW),
        spec=TaskSpec(command=["sleep", "inf"], env=env or {}),
    )


# The agent's tests poll often and give up early: their conditions are other tasks' next steps.
eventually = functools.partial(waiting.eventually, timeout_s=3.0, poll_s=0.005)


class ScriptedController:
    """A controller whose steps can raise or hang, recording what was called."""

    def __init__(
        self,
        *,
        raise_in: dict[str, Exception] | None = None,
        hang_in: set[str] | None = None,
        exit: Exit | None = None,
    ) -> None:
        self.raise_in = raise_in or {}
        self.hang_in = hang_in or set()
        self.exit = exit  # None: wait until shutdown
        self.calls: list[str] = []
        self._down = asyncio.Event()

    async def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.raise_in:
            raise self.raise_in[name]
        if name in self.hang_in:
            await asyncio.Event().wait()

    async def prepare(self) -> None:
        await self._step("prepare")

    async def start(self) -> None:
        await self._step("start")

    async def wait(self) -> Exit:
        await self._step("wait")
        if self.exit is not None:
            return self.exit
        await self._down.wait()
        return Exit(code=0, message="stopped")

    async def shutdown(self, grace_s: float) -> None:
        await self._step("shutdown")
        self._down.set()

    async def remove(self) -> None:
        await self._step("remove")


class OneController:
    """An executor that hands out one given controller."""

    name = "scripted"

    def __init__(self, controller: ScriptedController) -> None:
        self._controller = controller

    def controller(self, task: Task) -> ScriptedController:
        return self._controller


class FakeManager:
    """Answers agents over in-memory channel pairs, one pair per `connect`: a session per dial."""

    def __init__(self, *, heartbeat_period_s: float = 0.05, tasks: list[Task] | None = None) -> None:
        self.heartbeat_period_s = heartbeat_period_s
        self.tasks = list(tasks or [])  # the full set sent at each session's start
        self.reachable = True
        self.told_managers: list[str] | None = None  # sent in the next heartbeat acks, when set
        self.refuse = 0  # refuse this many sessions first
        self.ack = True
        self.answer_heartbeats = True
        self.dials = 0
        self.registers: list[Register] = []
        self.heartbeats = 0
        self.reports: list[StatusReport] = []
        self.channels: list[MemoryChannel] = []  # the manager's end of each session
        self._serving: set[asyncio.Task[None]] = set()
        self._sequence = 0

    async def connect(self, url: str) -> MemoryChannel:
        self.dials += 1
        if not self.reachable:
            raise OSError(f"connection to {url} refused")
        agent_end, manager_end = channel_pair()
        serving = asyncio.create_task(self._serve(manager_end))
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)
        return agent_end

    @property
    def channel(self) -> MemoryChannel:
        return self.channels[-1]

    def updates(self) -> list[TaskStatusUpdate]:
        return [update for report in self.reports for update in report.updates]

    def states(self, task_id: str) -> list[TaskState]:
        return [u.status.state for u in self.updates() if u.task_id == task_id]

    async def assign(
        self, *, full: bool = False, updated: list[Task] | None = None, removed: Any = ()
    ) -> None:
        self._sequence += 1
        message = Assignments(
            full=full, sequence=self._sequence, updated=updated or [], removed=list(removed)
        )
        await self.channel.send(message)

    async def drop(self) -> None:
        """The connection breaks."""
        await self.channel.close()

    async def close(self) -> None:
        for serving in list(self._serving):
            serving.cancel()
        await asyncio.wait(self._serving or {asyncio.create_task(asyncio.sleep(0))}, timeout=1.0)

    async def _serve(self, channel: MemoryChannel) -> None:
        try:
            register = await channel.receive()
            assert isinstance(register, Register)
            self.registers.append(register)
            if self.refuse > 0:
                self.refuse -= 1
                await channel.send(SessionRefused(code="busy", detail="try later", retry_after_s=0.01))
                return
            self.channels.append(channel)
            session = f"s{len(self.channels)}"
            await channel.send(
                SessionStarted(
                    session_id=session, machine_id="m-1", heartbeat_period_s=self.heartbeat_period_s
                )
            )
            self._sequence = 1
            await channel.send(Assignments(full=True, sequence=1, updated=self.tasks))
            while True:
                message = await channel.receive()
                if isinstance(message, Heartbeat):
                    self.heartbeats += 1
                    if self.answer_heartbeats:
                        await channel.send(
                            HeartbeatAck(period_s=self.heartbeat_period_s, managers=self.told_managers)
                        )
                elif isinstance(message, StatusReport):
                    assert message.session_id == session
                    self.reports.append(message)
                    if self.ack:
                        await channel.send(StatusAck(report_id=message.report_id))
        except ChannelClosed:
            return
