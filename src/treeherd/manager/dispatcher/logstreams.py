"""The manager's side of log streaming: open a stream of a task's output from its agent's session.

`LogStreams.open(session, task_id, ...)` sends a `LogRequest` on the agent's session and yields the
`LogChunk`s the dispatcher hands to `deliver`, until the agent's `LogEnd`, the end of the session, or the
reader stopping (then the agent is told `LogCancel`). A reader that falls `MAX_QUEUED` chunks behind is
cut off with an error rather than let the manager buffer without bound.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator

from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.errors import Unavailable
from treeherd.model.wire import LogCancel, LogChunk, LogEnd, LogRequest

__all__ = ["LogStreams"]

MAX_QUEUED = 1_024  # chunks (16 KiB at most each) buffered per stream for a slow reader


class _Stream:
    __slots__ = ("chunks", "end", "ready", "session")

    def __init__(self, session: AgentSession) -> None:
        self.session = session
        self.chunks: deque[bytes] = deque()
        self.ready = asyncio.Event()
        self.end: str | None = None  # None: still open; "" ended cleanly; else why it broke off


class LogStreams:
    """The open log streams of every session on this dispatcher."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    async def open(
        self, session: AgentSession, task_id: str, *, follow: bool, tail: int | None
    ) -> AsyncIterator[bytes]:
        """The task's output as the agent sends it. Raises `Unavailable` if the stream breaks off."""
        stream_id = next(self._ids)
        stream = _Stream(session)
        self._streams[stream_id] = stream
        session.post(LogRequest(stream_id=stream_id, task_id=task_id, follow=follow, tail=tail))
        try:
            while True:
                while stream.chunks:
                    yield stream.chunks.popleft()
                if stream.end is not None:
                    if stream.end:
                        raise Unavailable(stream.end)
                    return
                stream.ready.clear()
                await stream.ready.wait()
        finally:
            del self._streams[stream_id]
            if stream.end is None:
                session.post(LogCancel(stream_id=stream_id))

    def deliver(self, session: AgentSession, message: LogChunk | LogEnd) -> None:
        """A message from `session`'s agent about one of its streams (others are ignored)."""
        stream = self._streams.get(message.stream_id)
        if stream is None or stream.session is not session or stream.end is not None:
            return
        if isinstance(message, LogEnd):
            stream.end = message.error
        elif len(stream.chunks) >= MAX_QUEUED:
            stream.end = "the reader fell too far behind the task's output; ask again"
            session.post(LogCancel(stream_id=message.stream_id))
        else:
            stream.chunks.append(message.data)
        stream.ready.set()

    def session_closed(self, session: AgentSession) -> None:
        """End the streams of a session that is over."""
        for stream in self._streams.values():
            if stream.session is session and stream.end is None:
                stream.end = f"the agent's session ended ({session.reason or 'closed'})"
                stream.ready.set()
