"""The agent's session with the manager: dial, register, heartbeat, pass assignments on.

One session at a time over one channel (`transport.channel.connect_agent`, or an injected `connect`
for tests). Register → SessionStarted (or SessionRefused: wait what it says, then retry); then
heartbeats every period (the manager may change it in a HeartbeatAck) while messages are passed to
the worker. The session ends when the channel closes, when the manager stays silent for
`silence_factor` heartbeat periods (`SILENCE_PERIODS`), or when assignments arrive
out of sequence (a new session gets a fresh full set). Then it dials again after a bounded, jittered
exponential backoff. Tasks keep running meanwhile: only reports wait, kept by the worker until a session
acknowledges them.
Given several managers (`a,b,c`), it dials each in turn before backing off; a follower's refusal
(`not_leader`) names the leader, which it dials next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from treeherd.agent.certificates import CertificateKeeper
from treeherd.core.election import dial_order, known_managers, manager_urls
from treeherd.core.tasks.dispatch.heartbeats import ANSWER_EVERY
from treeherd.model.gateway import Figure
from treeherd.model.proxies import ProxyEventType
from treeherd.model.wire import (
    Assignments,
    CertificateIssued,
    CertificateRenewal,
    DependencyEndpoints,
    EndpointSet,
    Heartbeat,
    HeartbeatAck,
    LogCancel,
    LogEnd,
    LogRequest,
    ProxyEventReport,
    Register,
    RenewNow,
    SessionRefused,
    SessionStarted,
    StatusAck,
    StatusReport,
    TaskEndpoint,
    TaskStatusUpdate,
)
from treeherd.transport.channel import ChannelClosed, connect_agent

__all__ = ["Connect", "LogHandler", "Session", "SessionChannel", "SessionListener"]

log = logging.getLogger(__name__)

# Heartbeat periods without a word from the manager before the session is given up: it answers every
# ANSWER_EVERY-th heartbeat, and two more periods let a busy manager (its loop held for seconds by a
# large transaction) catch up without every agent dropping its session at once.
SILENCE_PERIODS = ANSWER_EVERY + 2


class SessionChannel(Protocol):
    async def send(self, message: object) -> None: ...

    async def receive(self) -> Any: ...

    async def close(self) -> None: ...


Connect = Callable[[str], Awaitable[SessionChannel]]


class SessionListener(Protocol):
    """What the session tells (the worker). Calls never block."""

    def session_started(self, session_id: str) -> None: ...

    def session_lost(self, reason: str) -> None: ...

    def assignments(self, message: Assignments) -> None: ...

    def acknowledged(self, report_id: int) -> None: ...


class LogHandler(Protocol):
    """Serves the manager's log requests (`agent.logs.LogStreamer`)."""

    def request(
        self, message: LogRequest, session_id: str, send: Callable[[object], Awaitable[None]]
    ) -> None: ...

    def cancel(self, stream_id: int) -> None: ...

    def cancel_all(self) -> None: ...


class DependencyHandler(Protocol):
    """Takes the endpoints of services this agent's tasks depend on (`agent.dependencies`)."""

    def endpoints(self, message: DependencyEndpoints) -> None: ...


class _SessionEnded(Exception):
    """This session is over; dial again."""


class Session:
    """`run()` keeps a session up until `stop()`; `send_report()` sends on the current one."""

    def __init__(
        self,
        url: str,
        register: Callable[[], Register],
        listener: SessionListener,
        *,
        connect: Connect | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        silence_factor: float = SILENCE_PERIODS,
        rng: random.Random | None = None,
        logs: LogHandler | None = None,
        dependencies: DependencyHandler | None = None,
    ) -> None:
        self._logs = logs
        self._dependencies = dependencies
        self._pending_sends: set[asyncio.Task[None]] = set()
        # Several managers (`http://a:7400,http://b:7400`): the session dials them in turn, and a
        # follower's refusal names the leader, dialed next.
        self._configured = manager_urls(url) or [url]
        self.managers = list(self._configured)
        self.url = self.managers[0]  # the manager of the current (or last) attempt
        self._queue: list[str] = []  # the managers still to try before a backoff
        self._refusal: SessionRefused | None = None
        self.session_id: str | None = None
        self.machine_id: str | None = None
        self.heartbeat_period_s = 5.0
        # Told the manager's settings at the start of each session (the agent keeps output by them).
        self.on_started: Callable[[SessionStarted], None] | None = None
        self.endpoint_refresh_s = 10.0
        self.sessions = 0  # how many sessions were established, for tests and metrics
        self._register = register
        self._listener = listener
        self._connect: Connect = connect or connect_agent
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._connect_timeout_s = connect_timeout_s
        self._silence_factor = silence_factor
        self._rng = rng or random.Random()
        self._channel: SessionChannel | None = None
        self._send_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._sequence = -1
        # A joined node's certificate, renewed on the session before it expires (None: no certificate).
        self.certificates: CertificateKeeper | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def send_report(self, report_id: int, updates: list[TaskStatusUpdate]) -> None:
        channel, session_id = self._channel, self.session_id
        if channel is None or session_id is None:
            raise ChannelClosed("no session")
        await self._send(channel, StatusReport(session_id=session_id, updates=updates, report_id=report_id))

    async def send_endpoints(self, endpoints: list[TaskEndpoint]) -> None:
        channel, session_id = self._channel, self.session_id
        if channel is None or session_id is None:
            raise ChannelClosed("no session")
        await self._send(channel, EndpointSet(session_id=session_id, endpoints=endpoints))

    async def send_proxy_event(self, type: ProxyEventType, reason: str, figures: dict[str, Figure]) -> None:
        channel, session_id = self._channel, self.session_id
        if channel is None or session_id is None:
            raise ChannelClosed("no session")
        await self._send(
            channel, ProxyEventReport(session_id=session_id, event=type, reason=reason, figures=figures)
        )

    async def _send(self, channel: SessionChannel, message: object) -> None:
        # One sender at a time: heartbeats and reports share the channel.
        async with self._send_lock:
            await channel.send(message)

    # --- the dialing loop -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.create_task(self._dial_forever(), name="agent-session")
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({loop, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            loop.cancel()
            await asyncio.wait({loop}, timeout=self._connect_timeout_s)
        error = loop.exception() if loop.done() and not loop.cancelled() else None
        if error is not None:
            raise error

    def backoff(self, attempt: int) -> float:
        """Exponential up to `backoff_max_s`, with half of it jittered so agents spread out."""
        cap = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(attempt, 30))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less when the session is stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    async def _dial_forever(self) -> None:
        # The loop checks the stop flag itself: cancellation alone is not enough, because on Python
        # 3.11 `asyncio.wait_for` (used inside the WebSocket library's close) can swallow a
        # cancellation that arrives as the awaited call finishes, and the loop would dial on.
        attempt = 0
        while not self._stopping.is_set():
            delay = self.backoff(attempt)
            if not self._queue:
                self._queue = dial_order(self.managers)
            self.url = self._queue.pop(0)
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    channel = await self._connect(self.url)
            except Exception as error:  # unreachable, refused, TLS, DNS...: all mean "try again later"
                if self._stopping.is_set():
                    return
                if self._queue:  # another manager may answer: try it now
                    log.warning("manager %s unreachable (%s); trying %s", self.url, error, self._queue[0])
                    continue
                log.warning("manager %s unreachable (%s); retrying in %.1fs", self.url, error, delay)
                attempt += 1
                await self._pause(delay)
                continue
            self._refusal = None
            try:
                retry_after = await self._session(channel)
            except (ChannelClosed, _SessionEnded, TimeoutError, OSError) as error:
                reason = str(error) or type(error).__name__
                retry_after = None
            except Exception as error:
                # A transport error the channel did not wrap, or a message we cannot handle: the
                # session is lost either way, and the agent must keep its tasks and dial again.
                log.warning("session failed", exc_info=True)
                reason = f"{type(error).__name__}: {error}"
                retry_after = None
            else:
                reason = "refused"
            finally:
                await self._close(channel)
            if self.session_id is not None:
                self.session_id = None
                self._listener.session_lost(reason)
                attempt = 0  # a session that worked resets the backoff
                delay = self.backoff(attempt)
            else:
                attempt += 1
            if self._stopping.is_set():
                return
            refusal = self._refusal
            if refusal is not None and refusal.code == "not_leader":
                # A follower: dial the leader it named (or the next manager) after its short pause. A
                # live manager answered: the cluster is between leaders, no reason to back off further.
                attempt = 0
                self._queue = dial_order([m for m in self.managers if m != self.url], refusal.leader or None)
                delay = retry_after or 0.0
            elif retry_after is not None:
                delay = min(max(retry_after, delay), self._backoff_max_s)
            else:  # the session ended: its manager first again, then the others
                self._queue = dial_order(self.managers, self.url)
            log.info("session with %s ended (%s); dialing again in %.1fs", self.url, reason, delay)
            await self._pause(delay)

    async def _close(self, channel: SessionChannel) -> None:
        self._channel = None
        try:
            async with asyncio.timeout(1.0):
                await channel.close()
        except Exception as error:
            log.debug("closing the channel: %s", error)

    async def _session(self, channel: SessionChannel) -> float | None:
        """Run one session; returns the delay asked for by a refusal, or raises when it ends."""
        await channel.send(self._register())
        async with asyncio.timeout(self._connect_timeout_s):
            answer = await channel.receive()
        if isinstance(answer, SessionRefused):
            self._refusal = answer
            log.warning("manager %s refused the session: %s: %s", self.url, answer.code, answer.detail)
            return answer.retry_after_s
        if not isinstance(answer, SessionStarted):
            raise _SessionEnded(f"expected SessionStarted, got {type(answer).__name__}")
        self.session_id = answer.session_id
        self.machine_id = answer.machine_id
        self.heartbeat_period_s = answer.heartbeat_period_s
        self.endpoint_refresh_s = answer.endpoint_refresh_s
        self.managers = known_managers(self._configured, answer.managers)
        if self.on_started is not None:
            self.on_started(answer)
        self.sessions += 1
        self._sequence = -1
        self._channel = channel
        self._listener.session_started(answer.session_id)
        log.info("session %s started (machine %s)", answer.session_id, answer.machine_id)
        heartbeats = asyncio.create_task(
            self._heartbeats(channel, answer.session_id), name="agent-heartbeats"
        )
        try:
            await self._receive(channel)
        finally:
            if self._logs is not None:
                self._logs.cancel_all()
            heartbeats.cancel()
            await asyncio.wait({heartbeats}, timeout=1.0)
        return None  # _receive only ends by raising

    async def _heartbeats(self, channel: SessionChannel, session_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_period_s)
            try:
                await self._send(channel, Heartbeat(session_id=session_id))
                if self.certificates is not None and self.certificates.due():
                    renewal = CertificateRenewal(session_id=session_id, csr_pem=self.certificates.request())
                    await self._send(channel, renewal)
            except Exception as error:
                log.info("heartbeat not sent (%s); ending the session", error)
                if self.certificates is not None:
                    self.certificates.lost()
                await self._close(channel)  # wakes the receiver with ChannelClosed
                return

    async def _receive(self, channel: SessionChannel) -> None:
        # The silence limit is kept by a watchdog, not by a deadline moved as messages come (a timer
        # cancelled and set again every tenth of a limit, for each agent of a busy process): a message
        # only notes when it came. The watchdog fires when the limit after the last message it knew of is
        # reached, and then either ends the session (nothing came since) or sets itself for the limit
        # after the last message. The session ends one limit after the manager's last message.
        loop = asyncio.get_running_loop()
        heard = loop.time()
        watchdog: asyncio.TimerHandle | None = None
        try:
            async with asyncio.timeout(None) as silence:

                def watch() -> None:
                    nonlocal watchdog
                    due = heard + self.heartbeat_period_s * self._silence_factor
                    if loop.time() >= due:
                        silence.reschedule(loop.time())  # expires now: the receive is cancelled
                    else:
                        watchdog = loop.call_at(due, watch)

                watch()
                while True:
                    message = await channel.receive()
                    heard = loop.time()
                    await self._handle(channel, message)
        except TimeoutError:
            raise _SessionEnded("the manager went silent") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()

    async def _handle(self, channel: SessionChannel, message: object) -> None:
        if isinstance(message, Assignments):
            self._check_sequence(message)
            self._listener.assignments(message)
        elif isinstance(message, StatusAck):
            self._listener.acknowledged(message.report_id)
        elif isinstance(message, HeartbeatAck):
            if message.period_s > 0:
                self.heartbeat_period_s = message.period_s
            if message.endpoint_refresh_s > 0:
                self.endpoint_refresh_s = message.endpoint_refresh_s
            if message.managers is not None:
                self.managers = known_managers(self._configured, message.managers)
        elif isinstance(message, DependencyEndpoints):
            if self._dependencies is not None:
                self._dependencies.endpoints(message)
        elif isinstance(message, LogRequest):
            self._log_request(channel, message)
        elif isinstance(message, LogCancel):
            if self._logs is not None:
                self._logs.cancel(message.stream_id)
        elif isinstance(message, CertificateIssued):
            if self.certificates is not None:
                self.certificates.accept(message)
        elif isinstance(message, RenewNow):
            if self.certificates is not None and self.session_id is not None:
                self.certificates.renew_now()
                if self.certificates.due():
                    csr = self.certificates.request()
                    await self._send(channel, CertificateRenewal(session_id=self.session_id, csr_pem=csr))
        elif isinstance(message, SessionRefused):
            raise _SessionEnded(f"the manager ended the session: {message.code}: {message.detail}")
        else:
            log.warning("unexpected message from the manager: %s", type(message).__name__)

    def _log_request(self, channel: SessionChannel, message: LogRequest) -> None:
        session_id = self.session_id or ""

        async def send(reply: object) -> None:
            await self._send(channel, reply)

        if self._logs is None:
            refusal = LogEnd(
                session_id=session_id, stream_id=message.stream_id, error="this agent serves no logs"
            )
            task = asyncio.create_task(send(refusal))
            self._pending_sends.add(task)
            task.add_done_callback(self._pending_sends.discard)
            return
        self._logs.request(message, session_id, send)

    def _check_sequence(self, message: Assignments) -> None:
        # A full set may come at any time; an increment must follow the previous message directly,
        # or the agent's picture has a hole that only a new session's full set can fill.
        if not message.full and (self._sequence < 0 or message.sequence != self._sequence + 1):
            raise _SessionEnded(f"assignments out of sequence: {message.sequence} after {self._sequence}")
        self._sequence = message.sequence
