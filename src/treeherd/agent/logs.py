"""The agent's side of log streaming: serves the manager's `LogRequest`s from the executor's task logs.

Each request runs as one asyncio task that reads the executor's logs for the task and sends them as
`LogChunk`s (at most `CHUNK_BYTES` each), then one `LogEnd`; `LogCancel` or the end of the session stops
it. Sending waits on the channel, so a slow manager slows the reading down instead of piling up output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from treeherd.agent.kept_logs import KeptLogs
from treeherd.executors import logfiles
from treeherd.executors.base import Executor, TaskLogs
from treeherd.model.wire import LogChunk, LogEnd, LogRequest
from treeherd.transport.channel import ChannelClosed

__all__ = ["CHUNK_BYTES", "LogStreamer"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 * 1024
Send = Callable[[object], Awaitable[None]]


class LogStreamer:
    """Runs the log streams of the current session."""

    def __init__(self, executor: Executor, kept: KeptLogs | None = None) -> None:
        self._executor = executor
        self._kept = kept
        self._streams: dict[int, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def request(self, message: LogRequest, session_id: str, send: Send) -> None:
        if message.stream_id in self._streams:
            return  # a repeated request: the stream already runs
        task = asyncio.create_task(
            self._stream(message, session_id, send), name=f"log-stream-{message.stream_id}"
        )
        self._streams[message.stream_id] = task
        task.add_done_callback(lambda _: self._streams.pop(message.stream_id, None))

    def cancel(self, stream_id: int) -> None:
        task = self._streams.get(stream_id)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        for task in list(self._streams.values()):
            task.cancel()

    async def _stream(self, message: LogRequest, session_id: str, send: Send) -> None:
        error = ""
        try:
            source = self._source()
            if source is None:
                error = f"the {self._executor.name} executor keeps no logs"
            else:
                chunks = self._logs(source, message)
                try:
                    async for chunk in chunks:
                        for start in range(0, len(chunk), CHUNK_BYTES):
                            piece = chunk[start : start + CHUNK_BYTES]
                            await send(
                                LogChunk(session_id=session_id, stream_id=message.stream_id, data=piece)
                            )
                finally:
                    with contextlib.suppress(Exception):
                        await chunks.aclose()  # type: ignore[attr-defined]
        except LookupError:
            error = f"this machine has no logs of task {message.task_id}"
        except ChannelClosed:
            return  # the session is gone: nobody to tell
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            log.warning("log stream of task %s failed", message.task_id, exc_info=True)
            error = f"reading the logs failed: {failure}"
        with contextlib.suppress(ChannelClosed, OSError):
            await send(LogEnd(session_id=session_id, stream_id=message.stream_id, error=error))

    def _logs(self, source: TaskLogs, message: LogRequest) -> AsyncIterator[bytes]:
        """The running task's output, or the kept output of a finished one."""
        try:
            return source.logs(message.task_id, follow=message.follow, tail=message.tail)
        except LookupError:
            kept = self._kept.directory(message.task_id) if self._kept is not None else None
            if kept is None:
                raise
            return logfiles.follow_logs(
                kept,
                follow=False,
                tail=message.tail,
                backups=len(list(kept.glob("output.log.*"))),
                running=lambda: False,
            )

    def _source(self) -> TaskLogs | None:
        logs = getattr(self._executor, "logs", None)
        return self._executor if callable(logs) else None  # type: ignore[return-value]
