"""haproxy's runtime API: one command per connection on a UNIX socket (the admin stats socket or the
master CLI), with a bounded wait, and every reply checked.

haproxy answers success with an empty reply or a fixed sentence ("New server registered.") and failure
with any other text, so the check is per command verb: a reply this module does not recognise as
success is an error, never silently accepted. The write side is half-closed after the command: without
it the master CLI waits for more input and never answers.
"""

from __future__ import annotations

import asyncio
import re
import time

import msgspec

from treeherd.model.errors import Unavailable

__all__ = [
    "RuntimeApiError",
    "RuntimeCall",
    "RuntimeCommandFailed",
    "call",
    "query",
    "reply_is_success",
]

DEFAULT_TIMEOUT_S = 5.0

# Commands whose success is a fixed sentence; every other command this module sends answers nothing.
_SUCCESS = {
    "add server": re.compile(r"New server registered\."),
    "del server": re.compile(r"Server deleted\."),
    "set server": re.compile(r"(IP changed from|no need to change the addr)"),
}
_EMPTY_ON_SUCCESS = (
    "enable server",
    "disable server",
    "enable health",
    "disable health",
    "set weight",
    "shutdown sessions",
    "reload",
)


class RuntimeApiError(Unavailable):
    """The socket could not be reached or did not answer in time."""


class RuntimeCommandFailed(RuntimeApiError):
    """haproxy answered a command with an error."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"haproxy refused {command!r}: {reply.strip() or '(empty reply)'}")
        self.command = command
        self.reply = reply


class RuntimeCall(msgspec.Struct, frozen=True, kw_only=True):
    """One command sent, its reply and how long the round trip took."""

    command: str
    reply: str
    ms: float


def reply_is_success(command: str, reply: str) -> bool:
    """Whether `reply` is haproxy's success answer to `command` (a state-changing command)."""
    text = reply.strip()
    if command.startswith("set server") and re.search(r"\b(weight|state)\b", command):
        return text == ""
    for verb, pattern in _SUCCESS.items():
        if command.startswith(verb):
            return bool(pattern.match(text))
    if command.startswith(_EMPTY_ON_SUCCESS):
        return text == ""
    raise ValueError(f"no success rule for command {command!r}")


async def query(socket_path: str, command: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Send one command and return the whole reply; raises `RuntimeApiError` when the socket is
    missing, refuses, resets or does not answer within `timeout_s` seconds."""
    if "\n" in command or ";" in command:
        raise ValueError(f"one command per call: {command!r}")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                writer.write_eof()
                return (await reader.read()).decode(errors="replace")
            finally:
                writer.close()
    except TimeoutError:
        raise RuntimeApiError(f"haproxy did not answer {command!r} within {timeout_s:g}s") from None
    except OSError as error:
        raise RuntimeApiError(
            f"haproxy socket {socket_path} unreachable: {error.strerror or error}"
        ) from None


async def call(socket_path: str, command: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RuntimeCall:
    """Send a state-changing command; raises `RuntimeCommandFailed` unless haproxy answered success."""
    started = time.perf_counter()
    reply = await query(socket_path, command, timeout_s=timeout_s)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply_is_success(command, reply):
        raise RuntimeCommandFailed(command, reply)
    return RuntimeCall(command=command, reply=reply.strip(), ms=round(elapsed, 3))
