"""The docker executor's local images: a reference (a local ID or tag) to the image's ID and whether the
image has a health check of its own (a HEALTHCHECK that is not NONE).

Responsibility: look images up in dockerd (never pulled), remember each answer for `TTL_S` seconds and
ask once for everyone who asks meanwhile: hundreds of tasks of one service are prepared and started at
once, and each would otherwise make its own lookup of the same image.
"""

from __future__ import annotations

import asyncio
import time

from treeherd.executors.docker_engine import Engine
from treeherd.executors.docker_health import has_check

__all__ = ["TTL_S", "LocalImage", "LocalImages"]

TTL_S = 5.0
LocalImage = tuple[str, bool]  # the image's ID, and whether it has a health check of its own


class LocalImages:
    """The images of one dockerd, as its tasks' references name them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._known: dict[str, tuple[LocalImage, float]] = {}
        self._lookups: dict[str, asyncio.Future[LocalImage | None]] = {}

    async def get(self, reference: str) -> LocalImage | None:
        """The image `reference` names on this host (None: it is not here)."""
        known = self._known.get(reference)
        if known is not None and time.monotonic() - known[1] < TTL_S:
            return known[0]
        lookup = self._lookups.get(reference)
        if lookup is None:
            lookup = self._lookups[reference] = asyncio.ensure_future(self._look_up(reference))
            lookup.add_done_callback(lambda done: self._looked_up(reference, done))
        return await asyncio.shield(lookup)  # a caller cancelled does not cancel the others' lookup

    def _looked_up(self, reference: str, done: asyncio.Future[LocalImage | None]) -> None:
        self._lookups.pop(reference, None)
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have been cancelled meanwhile

    async def _look_up(self, reference: str) -> LocalImage | None:
        now = time.monotonic()
        info = await self._engine.image(reference)
        if info is None:
            return None
        found = (str(info["Id"]), has_check(info))
        self._known[reference] = (found, now)
        return found
