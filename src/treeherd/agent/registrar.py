"""The agent's endpoint registrar: tells the manager which of its tasks are endpoints.

A task is an endpoint while it runs, is meant to, has a published port, and is healthy (or has no
health check: neither treeherd's nor, followed by its executor, its image's own). The registrar sends the whole set (`EndpointSet`) whenever it changes, when a new
session starts, and every `refresh_s` (10 s) otherwise (unless it is empty and was sent in this
session already: there is nothing to renew): the manager renews the registrations' leases
(TTL 30 s) with each set, so an agent that dies or is cut off loses its endpoints one TTL later, and
one that stops a task or sees it fail a check removes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from treeherd.agent.session import Session
from treeherd.core.tasks.agent_state import AgentState
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskEndpoint
from treeherd.transport.channel import ChannelClosed

__all__ = ["REFRESH_S", "Registrar", "task_endpoints"]

log = logging.getLogger(__name__)

REFRESH_S = 10.0


def task_endpoints(state: AgentState) -> list[TaskEndpoint]:
    """The endpoints the agent's tasks are now, in a stable order."""
    found: list[TaskEndpoint] = []
    for task, status in state.tasks_with_ports():
        if status.state != TaskState.RUNNING:
            continue
        if task.desired_state > TaskState.RUNNING:
            continue
        # With a health check (treeherd's, or the image's own that the executor follows): once healthy.
        if (task.spec.health is not None or status.health) and status.health != "healthy":
            continue
        found.extend(TaskEndpoint(task_id=task.id, port=port) for port in task.ports.values())
    found.sort(key=lambda endpoint: (endpoint.task_id, endpoint.port))
    return found


class Registrar:
    def __init__(self, state: AgentState, session: Session, *, refresh_s: float = REFRESH_S) -> None:
        self._state = state
        self._session = session
        self._refresh_s = refresh_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._sent: tuple[str | None, list[TaskEndpoint]] | None = None

    def changed(self) -> None:
        """Something about the tasks changed: look again (cheap; sends only if the set changed)."""
        # Still no endpoints, and the manager has that set of this session already: nothing to look at.
        if self._empty_set_sent() and not self._state.tasks_with_ports():
            return
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            if self._empty_set_sent():
                # Nothing to renew until something changes, and every change (a task's, a new session)
                # comes through `changed()`: no timer. At 5,000 idle agents the refresh timers alone
                # were 500 wake-ups a second that found nothing to send.
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._session.endpoint_refresh_s or self._refresh_s):
                        await self._wake.wait()
            refresh = not self._wake.is_set()
            self._wake.clear()
            if self._stopping:
                return
            await self._send(force=refresh)

    def _empty_set_sent(self) -> bool:
        """Whether the manager has an empty set from this session: nothing of it to renew."""
        return self._sent is not None and not self._sent[1] and self._sent[0] == self._session.session_id

    async def _send(self, *, force: bool) -> None:
        session_id = self._session.session_id
        if session_id is None:
            return
        endpoints = task_endpoints(self._state)
        # A refresh renews the leases of the set's registrations: an empty set, once the manager has it in
        # this session, has none to renew (at 5,000 idle agents that was 500 messages a second).
        if self._sent == (session_id, endpoints) and (not force or not endpoints):
            return
        try:
            await self._session.send_endpoints(endpoints)
        except (ChannelClosed, OSError) as error:
            log.debug("endpoints not sent: %s", error)
            return
        self._sent = (session_id, endpoints)
