"""The dispatcher: agent sessions on the agent channel (SwarmKit's dispatcher). The decisions live in
`core.tasks.dispatch`; this shell owns the sessions and wires in its sibling modules (heartbeats,
status_writer, assignments, endpoint_sets, logstreams, proxy_events: see the package's docstring).

- `serve(channel)` runs one agent's session: Register -> SessionStarted (or SessionRefused: rate
  limited, invalid, unavailable), then Heartbeats (answered with HeartbeatAck), StatusReports
  (answered with StatusAck once written or dropped) and, from the manager, Assignments: the full set,
  then increments. A new session for a machine closes the previous one.
- `run()` marks every node with an agent "unknown" (doubled grace), then runs the heartbeat timer, the
  status flusher and the change router until `stop()`.
- Timers run on an injectable clock (`sleep`, `monotonic`, `clock`); socket-level waits (the first
  message, a send) use the event loop's own time. Every store write goes through `manager.commits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

from treeherd.core.tasks.dispatch import (
    RegistrationLimiter,
    cluster_settings,
    heartbeat_answer_due,
    heartbeat_period,
    heartbeat_timeout,
    plan_register,
    told_settings,
)
from treeherd.core.tree import validate
from treeherd.core.view import View
from treeherd.manager.commits import Exhausted, Lost, commit_plan
from treeherd.manager.dispatcher.assignments import ASSIGNMENT_BATCH_S, AssignmentRouter
from treeherd.manager.dispatcher.endpoint_sets import apply_endpoint_set
from treeherd.manager.dispatcher.heartbeats import HeartbeatDeadlines
from treeherd.manager.dispatcher.logstreams import LogStreams
from treeherd.manager.dispatcher.pacer import Pacer
from treeherd.manager.dispatcher.proxy_events import ProxyEvents
from treeherd.manager.dispatcher.renewals import Signer, renew
from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.manager.dispatcher.status_writer import StatusWriter
from treeherd.manager.endpoints import Registry
from treeherd.model.errors import Forbidden, InvalidInput, TreeherdError, Unavailable
from treeherd.model.ops import Create, Op
from treeherd.model.services import ClusterSettings, Task
from treeherd.model.wire import (
    AgentMessage,
    CertificateRenewal,
    EndpointSet,
    Heartbeat,
    HeartbeatAck,
    LogChunk,
    LogEnd,
    ProxyEventReport,
    Register,
    RenewNow,
    SessionRefused,
    SessionStarted,
    StatusReport,
)
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Store
from treeherd.transport.channel import Channel, ChannelClosed

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 10.0  # for the first message of a connection
READY_WAIT_S = 10.0  # how long a registration waits for a starting dispatcher
SEND_TIMEOUT_S = 10.0  # for a refusal sent before closing
DRAIN_S = 2.0  # for the messages queued when a session ends
STOP_FLUSH_S = 5.0  # for the last status write when the dispatcher stops


class Dispatcher:
    """Serves agent sessions over channels and keeps nodes' and tasks' observed states in the store."""

    name = "dispatcher"

    def __init__(
        self,
        store: Store,
        *,
        managers: Sequence[str] | Callable[[], list[str]] = (),
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        ids: Callable[[], str] = new_id,
        assignment_batch_s: float = ASSIGNMENT_BATCH_S,
        registry: Registry | None = None,
        sign: Signer | None = None,
        refusals: Callable[..., None] | None = None,
    ) -> None:
        self.registry = registry
        # Told of sessions refused for their credential (a revoked certificate, another node's): the
        # audit trail (manager.audit_trail), called with address, what, reason and caller.
        self._refusals = refusals
        self._sign = sign  # renews agents' certificates (none: renewals are refused)  # where agents' endpoint sets go (none: they are ignored)
        # The managers' URLs agents are told (SessionStarted, and a HeartbeatAck when the list changed
        # since): fixed, or asked anew each time (the managers on etcd come and go).
        self._managers = managers if callable(managers) else (lambda fixed=list(managers): fixed)
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._ids = ids
        self._limiter = RegistrationLimiter()
        self._sessions: dict[str, AgentSession] = {}
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._logs = LogStreams()
        self._heartbeats = HeartbeatDeadlines(
            store, self._sessions, clock=clock, monotonic=monotonic, sleep=sleep, rand=rand
        )
        self._statuses = StatusWriter(store, clock=clock, sleep=sleep)
        self._batcher = self._statuses.batcher  # the reports waiting for a status write (tests read it)
        # One budget for the sessions' streams and writers: after a chunk of placements every session
        # has a message at once, and the loop must still read heartbeats in between.
        self._pacer = Pacer()
        self._assignments = AssignmentRouter(
            store, self._sessions, sleep=sleep, batch_s=assignment_batch_s, pacer=self._pacer
        )
        self._proxy_events = ProxyEvents(store, clock=clock, ids=ids)

    # ---- introspection -----------------------------------------------------------------------------
    def session_id(self, machine_id: str) -> str | None:
        """The id of the machine's live session, if it has one."""
        session = self._sessions.get(machine_id)
        return session.id if session is not None else None

    def ask_renewals(self, done: set[str]) -> int:
        """Ask every session opened with a node certificate not in `done` to renew it at once (a root
        rotation); how many were asked. The request travels on the open session, which stays."""
        asked = 0
        for session in list(self._sessions.values()):
            if session.identity is not None and session.identity[0] not in done:
                session.post(RenewNow(reason="the cluster's root CA is rotating"))
                asked += 1
        return asked

    def deadline(self, machine_id: str) -> float | None:
        """When the machine must be heard from (monotonic seconds), if it is tracked."""
        return self._heartbeats.due(machine_id)

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
            await self._heartbeats.mark_unknown()
            self._assignments.open()
            self._ready.set()
            log.info("dispatcher ready: %d node(s) wait for their agents", len(self._heartbeats))
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
            self._assignments.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_FLUSH_S):
                    await self._statuses.flush()
            for session in list(self._sessions.values()):
                session.close("the dispatcher stopped")

    def stop(self) -> None:
        self._stopping.set()

    # ---- sessions ----------------------------------------------------------------------------------
    async def serve(
        self,
        channel: Channel[AgentMessage],
        *,
        address: str = "",
        identity: str | None = None,
        identity_role: str = "worker",
    ) -> None:
        """Run one agent's session on `channel` until it ends (the agent leaves, misses its
        heartbeats, is replaced by a new session, or the dispatcher stops); closes the channel.
        `identity`: the node id of the certificate the agent connected with (mutual TLS), if any."""
        try:
            session = await self._open(channel, address, identity)
            if session is None:
                return
            if identity is not None:
                session.identity = (identity, identity_role)
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

    async def _open(
        self, channel: Channel[AgentMessage], address: str, identity: str | None
    ) -> AgentSession | None:
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
        machine_id = await self._register(
            channel, first, address, heartbeat_timeout(period, settings), identity
        )
        if machine_id is None:
            return None
        if not self._ready.is_set():
            await _refuse(channel, "unavailable", "the dispatcher stopped")
            return None
        session = AgentSession(self._ids(), machine_id, hostname, channel)
        session.period_s = period
        session.told_settings = told_settings(settings)
        previous = self._sessions.get(machine_id)
        if previous is not None:
            previous.close(f"replaced by session {session.id}")
        session.told_managers = list(self._managers())
        self._sessions[machine_id] = session
        session.post(
            SessionStarted(
                session_id=session.id,
                machine_id=machine_id,
                heartbeat_period_s=period,
                managers=session.told_managers,
                endpoint_refresh_s=settings.endpoint_ttl_s / 3,
                task_history=settings.task_history,
            )
        )
        return session

    async def _register(
        self,
        channel: Channel[AgentMessage],
        register: Register,
        address: str,
        grace_s: float,
        identity: str | None = None,
    ) -> str | None:
        """Write the machine's record and mark it ready; returns its id, or None after refusing."""
        now = self._clock()
        machine_ids: list[str] = []  # the machine of the plan being committed

        def plan(view: View) -> list[Op]:
            machine_ids.clear()  # empty while planning: an InvalidInput then refuses the registration
            ops, machine_id = plan_register(
                view, register, address=address, now=now, new_id=self._ids, identity=identity
            )
            self._heartbeats.heard_from(machine_id, grace_s)  # tracked first: a racing expiry sees it alive
            machine_ids.append(machine_id)
            return ops

        def refused(ops: list[Op], error: TreeherdError) -> None:
            if isinstance(ops[0], Create):  # the next plan makes a new id (or finds the winner's)
                self._heartbeats.forget(machine_ids[0])

        try:
            committed = await commit_plan(
                self._store,
                plan,
                what=f"registration of agent {register.hostname}",
                on_not_found=Lost.RETRY,
                on_already_exists=Lost.RETRY,
                exhausted=Exhausted.GIVE_UP,
                refused=refused,
                logger=log,
            )
        except TreeherdError as error:
            if isinstance(error, InvalidInput | Forbidden) and not machine_ids:
                log.warning("agent %s refused: %s", register.hostname, error.detail)
                if isinstance(error, Forbidden) and self._refusals is not None:
                    self._refusals(
                        address=address,
                        what=f"the agent session of {register.hostname}",
                        reason=error.detail,
                        caller=identity,
                    )
                await _refuse(channel, error.code, error.detail, retry_after_s=60.0)
                return None
            log.error("cannot record agent %s: %s", register.hostname, error)
            committed = None
        if committed is None:
            await _refuse(channel, "unavailable", "the manager could not record this machine; retry later")
            return None
        # The grace runs from now, when the session starts: a write that took seconds (an etcd cluster
        # electing a leader) must not leave the agent late before it could send a heartbeat.
        self._heartbeats.heard_from(machine_ids[0], grace_s)
        return machine_ids[0]

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
                self._statuses.report(session, message)
            elif isinstance(message, EndpointSet):
                if self.registry is not None:
                    apply_endpoint_set(self.registry, session, message)
            elif isinstance(message, (LogChunk, LogEnd)):
                self._logs.deliver(session, message)
            elif isinstance(message, ProxyEventReport):
                self._proxy_events.report(session, message)
            elif isinstance(message, CertificateRenewal):
                session.post(renew(session, message, self._sign))

    async def _write(self, session: AgentSession) -> None:
        while True:
            while session.outbox:
                await self._pacer.turn()
                await session.channel.send(session.outbox.popleft())
            if session.closed.is_set():
                return
            session.outbox_ready.clear()
            await session.outbox_ready.wait()

    def _heartbeat(self, session: AgentSession) -> None:
        settings = self._settings()
        managers = self._managers()
        changed = managers != session.told_managers
        told = told_settings(settings)
        if not heartbeat_answer_due(session.unanswered, changed or told != session.told_settings):
            # Not answered: the agent keeps the period it was last told, and is held to it.
            session.unanswered += 1
            self._heartbeats.heard_from(session.machine_id, heartbeat_timeout(session.period_s, settings))
            return
        period = heartbeat_period(settings, self._rand())
        # The agent is already waiting out the period it was told before; a shorter one (the cluster's
        # period just went down) only applies from its next heartbeat on.
        awaited = max(period, session.period_s)
        self._heartbeats.heard_from(session.machine_id, heartbeat_timeout(awaited, settings))
        session.period_s = period
        session.told_settings = told
        session.unanswered = 0
        if changed:
            session.told_managers = list(managers)
        session.post(
            HeartbeatAck(
                period_s=period,
                endpoint_refresh_s=settings.endpoint_ttl_s / 3,
                managers=list(managers) if changed else None,
            )
        )

    # ---- the loops ---------------------------------------------------------------------------------
    # Each loop and session task starts in a `Dispatcher` method: the schedule benchmark's profile
    # breakdown attributes samples to the dispatcher's parts by these frames.
    async def _heartbeat_loop(self) -> None:
        while True:
            now = await self._heartbeats.tick()
            self._limiter.prune(now, self._settings().registration_window_s)

    async def _status_loop(self) -> None:
        while True:
            await self._statuses.wait_due()
            await self._statuses.flush()

    async def _route_loop(self) -> None:
        await self._assignments.route()

    async def _assign(self, session: AgentSession) -> None:
        await self._assignments.stream(session)

    # ---- helpers -----------------------------------------------------------------------------------
    def _settings(self) -> ClusterSettings:
        return cluster_settings(self._store.view())


async def _refuse(
    channel: Channel[AgentMessage], code: str, detail: str, *, retry_after_s: float = 1.0
) -> None:
    with contextlib.suppress(ChannelClosed, TimeoutError):
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await channel.send(SessionRefused(code=code, detail=detail, retry_after_s=retry_after_s))
