"""The image's own HEALTHCHECK as a docker task's health, for a service without a treeherd health check.

Responsibility: follow Docker's verdict on a container (its `State.Health`: starting, healthy,
unhealthy, with the check's last output) and say each change. Docker runs the image's check in the
container itself; nothing is run here. One stream of Docker's `health_status` events (the containers of
this executor's scope, and their ends) wakes the followers of the containers it names; each then reads
its container's state with one inspect, and stops once the container no longer runs. An event missed (dockerd restarted, the stream reconnecting) is caught by a
look every `POLL_S` seconds. A container whose image has no HEALTHCHECK (or disables it) has no health
to follow: nothing is said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from treeherd.executors.docker_engine import DockerUnavailable, Engine, EngineError
from treeherd.model.discovery import Health

__all__ = ["ImageHealth", "has_check", "verdict"]

log = logging.getLogger(__name__)

POLL_S = 30.0  # a look at the container without an event (one missed while reconnecting)
RETRY_S = 1.0  # before the event stream is opened again after dockerd went away
OUTPUT_LIMIT = 200
STATUSES: dict[str, Health] = {"starting": "starting", "healthy": "healthy", "unhealthy": "unhealthy"}


def has_check(info: dict[str, Any]) -> bool:
    """Whether the container runs a health check of its image (`HEALTHCHECK NONE` disables one)."""
    test = (info.get("Config") or {}).get("Healthcheck", {}) or {}
    command = test.get("Test") or []
    return bool(command) and command[0] != "NONE"


def verdict(info: dict[str, Any]) -> tuple[Health, str]:
    """The container's health as Docker last judged it, and what the check last said."""
    health = (info.get("State") or {}).get("Health") or {}
    status = STATUSES.get(str(health.get("Status", "")), "starting")
    runs = health.get("Log") or []
    if not runs:
        return status, "image health check: not run yet"
    last = runs[-1]
    output = str(last.get("Output", "")).strip()[-OUTPUT_LIMIT:] or f"exit code {last.get('ExitCode')}"
    return status, f"image health check: {output}"


class ImageHealth:
    """The followers of this executor's containers' health, and the one event stream that wakes them."""

    def __init__(self, engine: Engine, label: str) -> None:
        self._engine = engine
        self._label = label
        self._followers: dict[str, set[asyncio.Event]] = {}
        self._pump: asyncio.Task[None] | None = None

    async def follow(self, name: str) -> AsyncIterator[tuple[Health, str]]:
        """Each change of the container's health (the first one at once), until the container ends or
        the caller stops; nothing when its image has no health check."""
        info = await self._look(name)
        if info is None or not has_check(info):
            return
        wake = asyncio.Event()
        self._followers.setdefault(name, set()).add(wake)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._listen(), name="docker-health-events")
        try:
            said: Health | None = None
            while info is not None and (info.get("State") or {}).get("Running"):
                health, message = verdict(info)
                if health != said:
                    yield health, message
                    said = health
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await wake.wait()
                wake.clear()
                info = await self._look(name)
        finally:
            followers = self._followers.get(name, set())
            followers.discard(wake)
            if not followers:
                self._followers.pop(name, None)
            if not self._followers and self._pump is not None:
                self._pump.cancel()
                self._pump = None

    async def _look(self, name: str) -> dict[str, Any] | None:
        """The container's inspect document (None: gone); while dockerd is away, keeps trying."""
        while True:
            try:
                return await self._engine.inspect(name)
            except (DockerUnavailable, EngineError) as error:
                log.debug("container %s: health not known (%s); trying again", name, error)
                await asyncio.sleep(RETRY_S)

    async def _listen(self) -> None:
        """Wake the followers of each container named by a health event, while any follow."""
        while self._followers:
            try:
                async for name in self._engine.health_events(self._label):
                    for wake in self._followers.get(name, ()):
                        wake.set()
            except (DockerUnavailable, EngineError) as error:
                log.debug("health events: %s; listening again", error)
            for followers in self._followers.values():  # a change may have been missed: look again
                for wake in followers:
                    wake.set()
            await asyncio.sleep(RETRY_S)
