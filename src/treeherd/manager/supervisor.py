"""Runs long-lived components together: one dying stops the others, loudly.

A component has a constructor that does no work, `async run()` that owns its loop until stopped or
failed, and `stop()` that asks `run()` to return soon. The supervisor runs every `run()` in one
`asyncio.TaskGroup`; `stop()` stops them all. A component whose `run()` returns while the others are
still meant to run counts as a failure, so a half-alive manager never lingers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)

SLOW_STOP_S = 3.0


class Component(Protocol):
    name: str

    async def run(self) -> None: ...

    def stop(self) -> None: ...


class ComponentExited(RuntimeError):
    """A component's run() returned on its own."""


class Supervisor:
    def __init__(
        self, components: Sequence[Component], *, plain_errors: tuple[type[Exception], ...] = ()
    ) -> None:
        self._components = list(components)
        # Errors whose message says what is wrong and what to do: logged without a traceback.
        self._plain_errors = plain_errors
        self._stopping = False
        self._running: set[str] = set()
        self._reporter: asyncio.Task[None] | None = None
        self._stop_requested_at: float | None = None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for component in self._components:
                    group.create_task(self._watch(component), name=component.name)
        finally:
            if self._reporter is not None:
                self._reporter.cancel()

    async def _watch(self, component: Component) -> None:
        self._running.add(component.name)
        try:
            await component.run()
        except asyncio.CancelledError:
            raise
        except self._plain_errors as error:
            log.error("component %s cannot run: %s; stopping the process", component.name, error)
            self.stop()
            raise
        except Exception:
            log.exception("component %s failed; stopping the process", component.name)
            self.stop()
            raise
        finally:
            self._running.discard(component.name)
            if self._stop_requested_at is not None:
                log.info(
                    "%s stopped (%.2f s after the stop request)",
                    component.name,
                    time.monotonic() - self._stop_requested_at,
                )
        if not self._stopping:
            self.stop()
            raise ComponentExited(f"component {component.name} exited unexpectedly")

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested_at = time.monotonic()
        for component in self._components:
            component.stop()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to report on
            self._reporter = asyncio.get_running_loop().create_task(self._report_slow_stop())

    async def _report_slow_stop(self) -> None:
        """Say which components are still stopping, every few seconds, so a slow stop is explained."""
        while self._running:
            await asyncio.sleep(SLOW_STOP_S)
            if self._running:
                log.warning("still stopping: %s", ", ".join(sorted(self._running)))
