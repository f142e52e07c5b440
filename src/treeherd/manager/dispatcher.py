"""The dispatcher: agent sessions, heartbeats, batched task status writes and assignment streams
(SwarmKit's dispatcher, on the agent channel). The decisions live in `core.dispatch`; this shell owns
the timers, the sessions and the store writes.

- `serve(channel)` runs one agent's session: Register -> SessionStarted (or SessionRefused: rate
  limited, invalid, unavailable), then Heartbeats (answered with HeartbeatAck), StatusReports
  (answered with StatusAck once written or dropped) and, from the manager, Assignments: the full set,
  then increments. A new session for a machine closes the previous one.
- `run()` marks every node with an agent "unknown" (doubled grace) and then runs three loops: the
  heartbeat timer (late nodes go "down", their sessions are closed; time the manager's own event loop
  was stalled does not count against them), the status flusher (one
  transaction per batch, at `status_batch_max` items or `status_batch_interval_s` after the first),
  and the change router: one store watch for all sessions, each event handed to the session of the
  task's machine (one watch per session would cost every commit a wake-up per agent).
- Timers run on an injectable clock (`sleep`, `monotonic`, `clock`); socket-level waits (the first
  message, a send) use the event loop's own time.

Invariants: a session sees its machine's tasks as one snapshot plus every later change (the snapshot's
revision filters what the router already had queued); a report is acknowledged only once what it moved
forward is committed, so an agent retrying unacknowledged reports loses nothing; every store write is
planned from the current view and planned again when it loses a version race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

from treeherd.core import validate
from treeherd.core.dispatch import (
    AssignmentSet,
    Deadlines,
    RegistrationLimiter,
    StatusBatcher,
    cluster_settings,
    heartbeat_period,
    heartbeat_timeout,
    plan_agent_state,
    plan_mark_unknown,
    plan_register,
    plan_status_flush,
)
from treeherd.core.view import View
from treeherd.manager.dependencies import DependencyFeeds, dependency_message
from treeherd.manager.endpoints import Registry
from treeherd.manager.inventory import new_id, utc_now
from treeherd.manager.logstreams import LogStreams
from treeherd.manager.sessions import AgentSession
from treeherd.model.discovery import Endpoint
from treeherd.model.errors import (
    AlreadyExists,
    Compacted,
    InvalidInput,
    NotFound,
    TreeherdError,
    Unavailable,
    VersionConflict,
    WatchLagged,
)
from treeherd.model.events import Change
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Op
from treeherd.model.services import ClusterSettings, Task
from treeherd.model.wire import (
    AgentMessage,
    Assignments,
    EndpointSet,
    Heartbeat,
    HeartbeatAck,
    LogChunk,
    LogEnd,
    Register,
    SessionRefused,
    SessionStarted,
    StatusAck,
    StatusReport,
)
from treeherd.store.base import Store, Watch
from treeherd.transport.channel import Channel, ChannelClosed

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 10.0  # for the first message of a connection
READY_WAIT_S = 10.0  # how long a registration waits for a starting dispatcher
SEND_TIMEOUT_S = 10.0  # for a refusal sent before closing
DRAIN_S = 2.0  # for the messages queued when a session ends
STOP_FLUSH_S = 5.0  # for the last status write when the dispatcher stops
TICK_S = 0.5  # the heartbeat timer's longest sleep: expiry is at most this late
# A heartbeat timer that wakes later than this past its time means the event loop was busy: the
# heartbeats that arrived meanwhile are not read yet, so the deadlines move by the lateness.
LATE_TICK_S = 0.25
ASSIGNMENT_BATCH_S = 0.05  # changes to one agent's tasks are coalesced over this interval
COMMIT_ATTEMPTS = 5


_Waiter = tuple[AgentSession, int]


class Dispatcher:
    """Serves agent sessions over channels and keeps nodes' and tasks' observed states in the store."""

    name = "dispatcher"

    def __init__(
        self,
        store: Store,
        *,
        managers: Sequence[str] = (),
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        ids: Callable[[], str] = new_id,
        assignment_batch_s: float = ASSIGNMENT_BATCH_S,
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry  # where agents' endpoint sets go (none: they are ignored)
        self.managers = list(managers)  # URLs sent to agents in SessionStarted; may be set before run()
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._ids = ids
        self._assignment_batch_s = assignment_batch_s
        self._deadlines = Deadlines()
        self._unknown: set[str] = set()
        self._limiter = RegistrationLimiter()
        self._batcher: StatusBatcher[_Waiter] = StatusBatcher()
        self._sessions: dict[str, AgentSession] = {}
        self._task_machine: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._status_pending = asyncio.Event()
        self._status_full = asyncio.Event()
        self._watch: Watch | None = None
        self._logs = LogStreams()
        self._feeds = DependencyFeeds()

    # ---- introspection -----------------------------------------------------------------------------
    def session_id(self, machine_id: str) -> str | None:
        """The id of the machine's live session, if it has one."""
        session = self._sessions.get(machine_id)
        return session.id if session is not None else None

    def deadline(self, machine_id: str) -> float | None:
        """When the machine must be heard from (monotonic seconds), if it is tracked."""
        return self._deadlines.due(machine_id)

    def task_logs(self, task: Task, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        """A task's output, streamed from the agent of its machine (see `manager.logstreams`)."""
        session = self._sessions.get(task.machine_id) if task.machine_id is not None else None
        if session is None:
            where = "was never placed" if task.machine_id is None else "is on a machine without a live agent"
            raise Unavailable(f"task {task.id} {where}: its logs cannot be read now")
        return self._logs.open(session, task.id, follow=follow, tail=tail)

    # ---- the component -----------------------------------------------------------------------------
    async def run(self) -> None:
        if self._stopping.is_set():
            return
        try:
            await self._mark_unknown()
            self._watch = self._open_watch()
            self._ready.set()
            log.info("dispatcher ready: %d node(s) wait for their agents", len(self._deadlines))
            async with asyncio.TaskGroup() as group:
                loops = [
                    group.create_task(self._heartbeat_loop(), name="dispatcher-heartbeats"),
                    group.create_task(self._status_loop(), name="dispatcher-statuses"),
                    group.create_task(self._route_loop(), name="dispatcher-router"),
                ]
                await self._stopping.wait()
                for loop in loops:
                    loop.cancel()
        finally:
            self._ready.clear()
            self._stopping.set()
            if self._watch is not None:
                self._watch.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_FLUSH_S):
                    await self._flush_statuses()
            for session in list(self._sessions.values()):
                session.close("the dispatcher stopped")

    def stop(self) -> None:
        self._stopping.set()

    # ---- sessions ----------------------------------------------------------------------------------
    async def serve(self, channel: Channel[AgentMessage], *, address: str = "") -> None:
        """Run one agent's session on `channel` until it ends (the agent leaves, misses its
        heartbeats, is replaced by a new session, or the dispatcher stops); closes the channel."""
        try:
            session = await self._open(channel, address)
            if session is None:
                return
            log.info(
                "agent %s connected (machine %s, session %s)",
                session.hostname,
                session.machine_id,
                session.id,
            )
            try:
                await self._run_session(session)
            finally:
                self._logs.session_closed(session)
                if self._sessions.get(session.machine_id) is session:
                    del self._sessions[session.machine_id]
                log.info("agent %s session %s ended: %s", session.hostname, session.id, session.reason)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await channel.close()

    async def _open(self, channel: Channel[AgentMessage], address: str) -> AgentSession | None:
        """Register the agent; returns its session, or None after refusing it."""
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT_S):
                first = await channel.receive()
        except (TimeoutError, ChannelClosed):
            return None
        if not isinstance(first, Register):
            await _refuse(channel, "protocol", "the first message of a session must be a register message")
            return None
        if not await self._wait_ready():
            await _refuse(channel, "unavailable", "the dispatcher is not running on this manager")
            return None
        try:
            hostname = validate.hostname(first.hostname)
        except InvalidInput as error:
            await _refuse(channel, "invalid", error.detail, retry_after_s=60.0)
            return None
        settings = self._settings()
        retry_after = self._limiter.admit(
            hostname,
            self._monotonic(),
            limit=settings.registration_limit,
            window_s=settings.registration_window_s,
        )
        if retry_after is not None:
            detail = (
                f"{hostname} registered {settings.registration_limit} times within"
                f" {settings.registration_window_s} s; retry in {retry_after:.1f} s"
            )
            log.warning("agent %s refused: %s", hostname, detail)
            await _refuse(channel, "rate_limited", detail, retry_after_s=retry_after)
            return None
        period = heartbeat_period(settings, self._rand())
        machine_id = await self._register(channel, first, address, heartbeat_timeout(period, settings))
        if machine_id is None:
            return None
        if not self._ready.is_set():
            await _refuse(channel, "unavailable", "the dispatcher stopped")
            return None
        session = AgentSession(self._ids(), machine_id, hostname, channel)
        session.period_s = period
        previous = self._sessions.get(machine_id)
        if previous is not None:
            previous.close(f"replaced by session {session.id}")
        self._sessions[machine_id] = session
        session.post(
            SessionStarted(
                session_id=session.id,
                machine_id=machine_id,
                heartbeat_period_s=period,
                managers=list(self.managers),
                endpoint_refresh_s=settings.endpoint_ttl_s / 3,
            )
        )
        return session

    async def _register(
        self, channel: Channel[AgentMessage], register: Register, address: str, grace_s: float
    ) -> str | None:
        """Write the machine's record and mark it ready; returns its id, or None after refusing."""
        now = self._clock()
        for _ in range(COMMIT_ATTEMPTS):
            try:
                ops, machine_id = plan_register(
                    self._store.view(), register, address=address, now=now, new_id=self._ids
                )
            except InvalidInput as error:
                await _refuse(channel, "invalid", error.detail, retry_after_s=60.0)
                return None
            # Tracked before the write: an expiry racing this registration sees the node alive.
            self._deadlines.register(machine_id, self._monotonic(), grace_s)
            self._unknown.discard(machine_id)
            try:
                await self._store.commit(ops)
                return machine_id
            except (VersionConflict, NotFound, AlreadyExists):
                if isinstance(ops[0], Create):  # the next plan makes a new id (or finds the winner's)
                    self._deadlines.forget(machine_id)
                continue
            except TreeherdError as error:
                log.error("cannot record agent %s: %s", register.hostname, error)
                if isinstance(ops[0], Create):
                    self._deadlines.forget(machine_id)
                break
        await _refuse(channel, "unavailable", "the manager could not record this machine; retry later")
        return None

    async def _wait_ready(self) -> bool:
        if not self._ready.is_set() and not self._stopping.is_set():
            ready = asyncio.ensure_future(self._ready.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait(
                    (ready, stopping), timeout=READY_WAIT_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ready.cancel()
                stopping.cancel()
                await asyncio.gather(ready, stopping, return_exceptions=True)
        return self._ready.is_set()

    async def _run_session(self, session: AgentSession) -> None:
        reader = asyncio.create_task(self._read(session))
        assigner = asyncio.create_task(self._assign(session))
        writer = asyncio.create_task(self._write(session))
        closed = asyncio.create_task(session.closed.wait())
        tasks = (reader, assigner, writer, closed)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is closed or task.cancelled():
                    continue
                error = task.exception()
                if isinstance(error, ChannelClosed):
                    session.close(f"the channel closed ({error})")
                elif error is not None:
                    log.error("agent %s session failed", session.hostname, exc_info=error)
                    session.close(f"internal error: {error!r}")
            session.close("the session ended")
            reader.cancel()
            assigner.cancel()
            # Let queued messages (a last acknowledgement) reach the agent, briefly.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DRAIN_S):
                    await asyncio.shield(writer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, session: AgentSession) -> None:
        while True:
            message = await session.channel.receive()
            if session.closed.is_set():
                return
            if isinstance(message, Register):
                session.close("the agent registered twice on one channel")
                return
            if message.session_id != session.id:
                session.post(
                    SessionRefused(
                        code="session_invalid", detail="unknown session: register again", retry_after_s=0.0
                    )
                )
                session.close(f"a message named another session ({message.session_id})")
                return
            if isinstance(message, Heartbeat):
                self._heartbeat(session)
            elif isinstance(message, StatusReport):
                self._status_report(session, message)
            elif isinstance(message, EndpointSet):
                self._endpoint_set(session, message)
            elif isinstance(message, (LogChunk, LogEnd)):
                self._logs.deliver(session, message)

    async def _write(self, session: AgentSession) -> None:
        while True:
            while session.outbox:
                await session.channel.send(session.outbox.popleft())
            if session.closed.is_set():
                return
            session.outbox_ready.clear()
            await session.outbox_ready.wait()

    def _heartbeat(self, session: AgentSession) -> None:
        settings = self._settings()
        period = heartbeat_period(settings, self._rand())
        # The agent is already waiting out the period it was told before; a shorter one (the cluster's
        # period just went down) only applies from its next heartbeat on.
        awaited = max(period, session.period_s)
        self._deadlines.register(session.machine_id, self._monotonic(), heartbeat_timeout(awaited, settings))
        self._unknown.discard(session.machine_id)
        session.period_s = period
        session.post(HeartbeatAck(period_s=period, endpoint_refresh_s=settings.endpoint_ttl_s / 3))

    def _endpoint_set(self, session: AgentSession, message: EndpointSet) -> None:
        """Apply the agent's endpoint sets one at a time, the latest one only if several queue up."""
        if self.registry is None:
            return
        session.endpoints_pending = message.endpoints
        if session.endpoints_sync is None or session.endpoints_sync.done():
            session.endpoints_sync = asyncio.create_task(self._sync_endpoints(session, self.registry))

    async def _sync_endpoints(self, session: AgentSession, registry: Registry) -> None:
        while session.endpoints_pending is not None:
            endpoints, session.endpoints_pending = session.endpoints_pending, None
            try:
                await registry.agent_endpoints(session.machine_id, endpoints)
            except TreeherdError as error:
                log.warning("endpoints of agent %s not recorded: %s", session.hostname, error)

    # ---- heartbeat deadlines -----------------------------------------------------------------------
    async def _mark_unknown(self) -> None:
        now = self._clock()
        tracked: list[str] = []

        def plan(view: View) -> list[Op]:
            ops, ids = plan_mark_unknown(view, now)
            tracked[:] = ids
            return ops

        await self._commit(plan, "mark nodes unknown")
        settings = self._settings()
        started = self._monotonic()
        for machine_id in tracked:
            timeout = heartbeat_timeout(heartbeat_period(settings, self._rand()), settings, unknown=True)
            self._deadlines.register(machine_id, started, timeout)
            self._unknown.add(machine_id)

    async def _heartbeat_loop(self) -> None:
        while True:
            next_due = self._deadlines.next_due()
            wait = TICK_S if next_due is None else min(max(next_due - self._monotonic(), 0.0), TICK_S)
            asleep = self._monotonic()
            await self._sleep(wait)
            now = self._monotonic()
            lateness = now - asleep - wait
            if lateness > LATE_TICK_S:
                log.info("the dispatcher's timer ran %.2f s late: heartbeat deadlines move as much", lateness)
                self._deadlines.postpone(lateness)
            late = self._deadlines.expired(now)
            if late:
                await self._expire(late)
            self._limiter.prune(now, self._settings().registration_window_s)

    async def _expire(self, late: list[str]) -> None:
        for machine_id in late:
            session = self._sessions.get(machine_id)
            if session is not None:
                session.close("no heartbeat within the grace period")
        never = [m for m in late if m in self._unknown]
        silent = [m for m in late if m not in self._unknown]
        self._unknown.difference_update(late)
        now = self._clock()

        def plan(view: View) -> list[Op]:
            # A node that registered again while this write was pending is alive: leave it be.
            return [
                *plan_agent_state(
                    view, [m for m in silent if m not in self._deadlines], "down", "heartbeat failure", now
                ),
                *plan_agent_state(
                    view,
                    [m for m in never if m not in self._deadlines],
                    "down",
                    "no heartbeat since the dispatcher started",
                    now,
                ),
            ]

        view = self._store.view()
        for machine_id in late:
            found = view.get(Machine, machine_id)
            log.info(
                "node %s missed its heartbeats: marking it down", found.hostname if found else machine_id
            )
        try:
            written = await self._commit(plan, "mark nodes down")
        except TreeherdError as error:
            log.error("cannot mark %d node(s) down: %s", len(late), error)
            written = False
        if not written:  # track them again so that the next tick tries once more
            retry_at = self._monotonic()
            for machine_id in late:
                if machine_id not in self._deadlines:
                    self._deadlines.register(machine_id, retry_at, TICK_S)
                    if machine_id in never:
                        self._unknown.add(machine_id)

    # ---- task status -------------------------------------------------------------------------------
    def _status_report(self, session: AgentSession, report: StatusReport) -> None:
        outcome = self._batcher.offer(
            self._store.view(), session.machine_id, report.updates, (session, report.report_id)
        )
        for task_id, verdict in outcome.verdicts:
            if verdict.rejected:
                log.warning(
                    "agent %s: status of task %s rejected (%s)", session.hostname, task_id, verdict.value
                )
        if not outcome.waiting:
            session.post(StatusAck(report_id=report.report_id))
            return
        self._status_pending.set()
        if len(self._batcher) >= self._settings().status_batch_max:
            self._status_full.set()

    async def _status_loop(self) -> None:
        while True:
            await self._status_pending.wait()
            await self._sleep_or(self._status_full, self._settings().status_batch_interval_s)
            await self._flush_statuses()

    async def _flush_statuses(self) -> None:
        """Write every queued status in one transaction, then acknowledge the reports waiting on it."""
        self._status_pending.clear()
        self._status_full.clear()
        batch = self._batcher.take()
        written = False
        try:
            written = await self._commit(
                lambda view: plan_status_flush(view, batch, self._clock())[0], "statuses"
            )
        except TreeherdError as error:
            log.error("cannot write %d task status(es), will retry: %s", len(batch), error)
        finally:
            waiters = self._batcher.settle(written)
            if len(self._batcher):
                self._status_pending.set()
        for session, report_id in waiters:
            session.post(StatusAck(report_id=report_id))

    # ---- assignments -------------------------------------------------------------------------------
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

    async def _route_loop(self) -> None:
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
            for needing in self._feeds.machines_of(service):
                self._send_dependency(needing, service)

    def _send_dependency(self, machine_id: str, service: str) -> None:
        session = self._sessions.get(machine_id)
        if session is not None and session.snapshot_revision is not None:
            session.post(dependency_message(self._store.view(), service))

    def _send_dependencies(self, session: AgentSession) -> None:
        view = self._store.view()
        for service in self._feeds.services_of(session.machine_id):
            session.post(dependency_message(view, service))

    async def _assign(self, session: AgentSession) -> None:
        assignments = AssignmentSet(session.machine_id)
        session.post(self._full_assignments(session, assignments))
        self._send_dependencies(session)
        while True:
            await session.events_ready.wait()
            if self._assignment_batch_s > 0:
                await self._sleep(self._assignment_batch_s)
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

    # ---- helpers -----------------------------------------------------------------------------------
    def _settings(self) -> ClusterSettings:
        return cluster_settings(self._store.view())

    async def _commit(self, plan: Callable[[View], list[Op]], what: str) -> bool:
        """Plan against the current view and commit, planning again after a lost race. False if the
        races kept being lost; store failures raise."""
        for _ in range(COMMIT_ATTEMPTS):
            ops = plan(self._store.view())
            if not ops:
                return True
            try:
                await self._store.commit(ops)
                return True
            except (VersionConflict, NotFound) as error:
                log.debug("dispatcher write (%s) lost a race, planning again: %s", what, error)
        log.warning("dispatcher write (%s) lost %d races in a row; will retry later", what, COMMIT_ATTEMPTS)
        return False

    async def _sleep_or(self, event: asyncio.Event, seconds: float) -> None:
        """Return when `event` is set or `seconds` passed on the dispatcher's clock."""
        if event.is_set():
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)


async def _refuse(
    channel: Channel[AgentMessage], code: str, detail: str, *, retry_after_s: float = 1.0
) -> None:
    with contextlib.suppress(ChannelClosed, TimeoutError):
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await channel.send(SessionRefused(code=code, detail=detail, retry_after_s=retry_after_s))
