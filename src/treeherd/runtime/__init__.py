"""The impure basics every shell takes: the wall clock and random ids.

`model/` and `core/` never read these; shells (store, executors, transport, manager, agent, gateway,
api, cli) take them as injectable defaults (`clock=utc_now`, `ids=new_id`) and pass `now` and `new_id`
down to the pure decisions, so a test can substitute a fixed clock and predictable ids.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

__all__ = ["new_id", "utc_now"]


def utc_now() -> datetime:
    """The wall clock, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random 64-bit object id in hex."""
    return secrets.token_hex(8)
