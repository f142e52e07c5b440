"""The impure basics every shell takes: the wall clock, random ids and the event loop.

`model/` and `core/` never read these; shells (store, executors, transport, manager, agent, gateway,
api, cli) take them as injectable defaults (`clock=utc_now`, `ids=new_id`) and pass `now` and `new_id`
down to the pure decisions, so a test can substitute a fixed clock and predictable ids.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["event_loop_runner", "new_id", "utc_now"]


def utc_now() -> datetime:
    """The wall clock, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random 64-bit object id in hex."""
    return secrets.token_hex(8)


def event_loop_runner() -> asyncio.Runner:
    """The runner of a long-lived process's loop: uvloop where it is installed (its TLS and sockets are
    written in C, several times quicker than the standard loop's), else the standard loop."""
    import asyncio  # here: the ENC, which reads the clock, starts without the event loop's modules

    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
