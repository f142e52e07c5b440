"""Bounded waits for tests and benchmarks: poll a condition owned by someone else (another task, another
process) until it holds, and fail with what was awaited once the time is up."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually", "wait_for"]

T = TypeVar("T")


async def eventually(
    check: Callable[[], object] | Callable[[], Awaitable[object]],
    what: str = "condition",
    *,
    timeout_s: float = 5.0,
    poll_s: float = 0.01,
) -> float:
    """Poll `check()` (a plain or an async function) every `poll_s` until its result is truthy; returns
    the seconds that took. Raises AssertionError naming `what` after `timeout_s`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return time.monotonic() - started
                await asyncio.sleep(poll_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


def wait_for(check: Callable[[], T], what: str, timeout_s: float = 30.0, *, poll_s: float = 0.1) -> T:
    """Call `check()` every `poll_s` (blocking) until it returns something truthy, and return that.
    Raises AssertionError naming `what` and the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")
        time.sleep(poll_s)
