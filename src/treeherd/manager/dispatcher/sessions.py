"""One agent's live session on the dispatcher: its channel, the messages queued for it, the store
events about its machine's tasks waiting to become assignments, and why it ended."""

from __future__ import annotations

import asyncio
from collections import deque

from treeherd.model.events import Event
from treeherd.model.wire import AgentMessage, TaskEndpoint
from treeherd.transport.channel import Channel

MAX_OUTBOX = 10_000  # messages queued for an agent that does not read them: the session is dropped
MAX_SESSION_EVENTS = 100_000  # events queued for one session: drop them and send a full set instead


class AgentSession:
    """One agent's live session: its channel, what is queued for it, and why it ended."""

    def __init__(
        self, session_id: str, machine_id: str, hostname: str, channel: Channel[AgentMessage]
    ) -> None:
        self.id = session_id
        self.machine_id = machine_id
        self.hostname = hostname
        self.channel = channel
        self.outbox: deque[object] = deque()
        self.outbox_ready = asyncio.Event()
        self.events: list[Event] = []
        self.events_ready = asyncio.Event()
        self.snapshot_revision: int | None = None
        self.resync = False
        self.period_s = 0.0  # the heartbeat period the agent was last told
        self.told_settings: tuple[float, ...] = ()  # the cluster settings it was last told them from
        self.unanswered = 0  # heartbeats since the last answer
        self.told_managers: list[str] = []  # the managers' URLs the agent was last told
        # The latest endpoint set the agent sent and not yet applied, and the task applying them.
        self.endpoints_pending: list[TaskEndpoint] | None = None
        self.endpoints_sync: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.reason = ""
        # The node id and role of the certificate the agent connected with (mutual TLS), if any.
        self.identity: tuple[str, str] | None = None

    def post(self, message: object) -> None:
        """Queue a message for the agent (never blocks; a session that stops reading is dropped)."""
        if self.closed.is_set():
            return
        if len(self.outbox) >= MAX_OUTBOX:
            self.close(f"the agent left {MAX_OUTBOX} messages unread")
            return
        self.outbox.append(message)
        self.outbox_ready.set()

    def push(self, event: Event) -> None:
        """Hand the session a store event about one of its machine's tasks."""
        if len(self.events) >= MAX_SESSION_EVENTS:
            self.events.clear()
            self.resync = True
        elif not self.resync:
            self.events.append(event)
        self.events_ready.set()

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()
            self.outbox_ready.set()
