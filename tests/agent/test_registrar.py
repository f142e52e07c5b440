"""The endpoint registrar's refreshes: a set with endpoints is sent again every refresh period (the
manager renews its leases with it); an empty one only when it changes or a session starts, and
then the registrar waits for a change without a timer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from treeherd.agent.registrar import Registrar
from treeherd.core.tasks.agent_state import AgentState
from treeherd.model.wire import TaskEndpoint


class RecordingSession:
    """The part of the agent's session the registrar uses: its id, the refresh period, and sends."""

    def __init__(self) -> None:
        self.session_id: str | None = "s1"
        self.endpoint_refresh_s = 0.02
        self.sent: list[tuple[str | None, list[TaskEndpoint]]] = []

    async def send_endpoints(self, endpoints: list[TaskEndpoint]) -> None:
        self.sent.append((self.session_id, endpoints))


@contextlib.asynccontextmanager
async def running_registrar() -> AsyncIterator[tuple[Registrar, RecordingSession]]:
    """A registrar running on a recording session; stopped and awaited on the way out."""
    session = RecordingSession()
    registrar = Registrar(AgentState(), session)  # type: ignore[arg-type]
    runner = asyncio.create_task(registrar.run())
    try:
        yield registrar, session
    finally:
        registrar.stop()
        await asyncio.wait_for(runner, 5)


async def test_an_empty_set_is_sent_once_per_session_not_every_refresh():
    async with running_registrar() as (registrar, session):
        registrar.changed()
        await asyncio.sleep(0.2)  # ten refresh periods
        assert session.sent == [("s1", [])]
        session.session_id = "s2"  # a new session (a new leader); the agent's worker calls changed()
        registrar.changed()
        await asyncio.sleep(0.1)
        assert session.sent == [("s1", []), ("s2", [])]


async def test_a_set_with_endpoints_is_sent_every_refresh(monkeypatch):
    endpoints = [TaskEndpoint(task_id="t1", port=8000)]
    monkeypatch.setattr("treeherd.agent.registrar.task_endpoints", lambda state: list(endpoints))
    async with running_registrar() as (_, session):
        await asyncio.sleep(0.2)
        assert len(session.sent) >= 3
        assert all(sent == ("s1", endpoints) for sent in session.sent)


async def test_an_empty_set_sent_in_this_session_waits_for_a_change_without_a_timer():
    async with running_registrar() as (registrar, session):
        registrar.changed()
        await asyncio.sleep(0.1)
        assert session.sent == [("s1", [])]
        loop = asyncio.get_running_loop()
        timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert timers == []  # the registrar sleeps on its event alone
