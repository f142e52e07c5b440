"""What the dispatcher tells each agent about its machine's tasks and their dependencies: one store
watch for all sessions, each change handed to the session of the task's machine (one watch per session
would cost every commit a wake-up per agent), and per session a stream of assignments, the full set
first and then increments, with the endpoints of the services its tasks depend on.

Invariant: a session sees its machine's tasks as one snapshot plus every later change (the snapshot's
revision filters what the router already had queued). A router that falls behind the store's history
sends every session its full set again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from treeherd.core.tasks.dispatch import AssignmentSet
from treeherd.manager.dependencies import DependencyFeeds, dependency_message
from treeherd.manager.dispatcher.pacer import Pacer
from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import Compacted, WatchLagged
from treeherd.model.events import Change
from treeherd.model.objects import Machine
from treeherd.model.services import Task
from treeherd.model.wire import Assignments
from treeherd.store.base import Store, Watch

__all__ = ["ASSIGNMENT_BATCH_S", "AssignmentRouter"]

# The dispatcher's logger: its records keep the component's name whichever of its modules writes them.
log = logging.getLogger(__name__)

ASSIGNMENT_BATCH_S = 0.05  # changes to one agent's tasks are coalesced over this interval


class AssignmentRouter:
    """Routes the store's task and endpoint changes to the sessions they concern, and streams each
    session's assignments and dependency endpoints."""

    def __init__(
        self,
        store: Store,
        sessions: Mapping[str, AgentSession],
        *,
        sleep: Callable[[float], Awaitable[None]],
        batch_s: float,
        pacer: Pacer,
    ) -> None:
        self._store = store
        self._pacer = pacer  # shared with the dispatcher's writers
        self._sessions = sessions  # the dispatcher's live sessions, by machine
        self._sleep = sleep
        self._batch_s = batch_s
        self._watch: Watch | None = None
        self._task_machine: dict[str, str] = {}
        self._feeds = DependencyFeeds()

    def open(self) -> None:
        """Start watching the store (before any session streams its assignments)."""
        self._watch = self._open_watch()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def _open_watch(self) -> Watch:
        """A watch from the current revision and the task -> machine map as of that revision (read
        together, without yielding, so no change falls between them)."""
        view = self._store.view()
        watch = self._store.watch()
        self._task_machine = {t.id: t.machine_id for t in view.all(Task) if t.machine_id is not None}
        self._feeds = DependencyFeeds()
        for task in view.all(Task):
            self._feeds.note(task)
        return watch

    async def route(self) -> None:
        """Hand every store change to the sessions it concerns, until the change stream ends."""
        while self._watch is not None:
            try:
                change = await anext(self._watch)
            except StopAsyncIteration:
                log.warning("the store's change stream ended: assignments are no longer updated")
                return
            except WatchLagged as lagged:
                self._watch.close()
                try:
                    self._watch = self._store.watch(lagged.last_revision)
                except Compacted:
                    log.warning("the dispatcher fell behind the store's history: sending full assignments")
                    self._watch = self._open_watch()
                    for session in self._sessions.values():
                        session.resync = True
                        session.events.clear()
                        session.events_ready.set()
                continue
            self._route(change)

    def _route(self, change: Change) -> None:
        changed_services: set[str] = set()
        for event in change.events:
            task = event.object
            if isinstance(task, Machine) and event.type == "deleted" and task.node_identity is not None:
                # `node rm` revoked its certificate: its session ends now, and no new one opens.
                removed = self._sessions.get(task.id)
                if removed is not None:
                    removed.close("its machine was removed and its certificate revoked")
                continue
            if isinstance(task, Endpoint):
                changed_services.add(task.service)
                continue
            if not isinstance(task, Task):
                continue
            for needing, service in self._feeds.note(task, deleted=event.type == "deleted"):
                self._send_dependency(needing, service)
            previous = self._task_machine.get(task.id)
            if event.type == "deleted" or task.machine_id is None:
                self._task_machine.pop(task.id, None)
            else:
                self._task_machine[task.id] = task.machine_id
            for machine_id in {task.machine_id, previous}:
                session = self._sessions.get(machine_id) if machine_id is not None else None
                if session is None or session.snapshot_revision is None:
                    continue
                if change.revision > session.snapshot_revision:
                    session.push(event)
        for service in changed_services:
            listening = [s for m in self._feeds.machines_of(service) if (s := self._listening(m)) is not None]
            if listening:
                # One message for every agent that needs the service, not one made per agent.
                message = dependency_message(self._store.view(), service)
                for session in listening:
                    session.post(message)

    def _send_dependency(self, machine_id: str, service: str) -> None:
        session = self._listening(machine_id)
        if session is not None:
            session.post(dependency_message(self._store.view(), service))

    def _listening(self, machine_id: str) -> AgentSession | None:
        """The machine's session, once it has its full assignment set (then it takes increments)."""
        session = self._sessions.get(machine_id)
        return session if session is not None and session.snapshot_revision is not None else None

    def _send_dependencies(self, session: AgentSession) -> None:
        view = self._store.view()
        for service in self._feeds.services_of(session.machine_id):
            session.post(dependency_message(view, service))

    async def stream(self, session: AgentSession) -> None:
        """Send the session its full assignments and dependencies, then the increments as its
        machine's tasks change (the full set again after a resync), until cancelled."""
        assignments = AssignmentSet(session.machine_id)
        session.post(self._full_assignments(session, assignments))
        self._send_dependencies(session)
        while True:
            await session.events_ready.wait()
            if self._batch_s > 0:
                await self._sleep(self._batch_s)
            await self._pacer.turn()  # every session's timer runs out in the same turn after a chunk
            session.events_ready.clear()
            if session.resync:
                session.resync = False
                session.post(self._full_assignments(session, assignments))
                self._send_dependencies(session)
                continue
            events, session.events = session.events, []
            for event in events:
                assignments.apply(event)
            message = assignments.increment()
            if message is not None:
                session.post(message)

    def _full_assignments(self, session: AgentSession, assignments: AssignmentSet) -> Assignments:
        view = self._store.view()
        session.snapshot_revision = view.revision
        session.events.clear()
        return assignments.full(view.referrers(Task, "machine", session.machine_id))
