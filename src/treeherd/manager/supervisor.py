"""Runs long-lived components together: one dying stops the others, loudly.

A component has a constructor that does no work, `async run()` that owns its loop until stopped or
failed, and `stop()` that asks `run()` to return soon. The supervisor runs every `run()` in one
`asyncio.TaskGroup`; `stop()` stops them all. A component whose `run()` returns while the others are
still meant to run counts as a failure, so a half-alive manager never lingers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def run(self) -> None: ...

    def stop(self) -> None: ...


class ComponentExited(RuntimeError):
    """A component's run() returned on its own."""


class Supervisor:
    def __init__(self, components: Sequence[Component]) -> None:
        self._components = list(components)
        self._stopping = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for component in self._components:
                group.create_task(self._watch(component), name=component.name)

    async def _watch(self, component: Component) -> None:
        try:
            await component.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("component %s failed; stopping the process", component.name)
            self.stop()
            raise
        if not self._stopping:
            self.stop()
            raise ComponentExited(f"component {component.name} exited unexpectedly")

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for component in self._components:
            component.stop()
