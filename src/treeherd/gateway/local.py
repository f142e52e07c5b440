"""The gateway `treeherd up` runs beside its manager: the same `Gateway`, owned by the process.

Unlike `treeherd gateway run` (whose nginx outlives the gateway, to be adopted by the next one), `up` is
the one-machine, one-command setup: its nginx stops when `up` stops. And the edge is optional there: if
nginx cannot start (a port taken, no permission for port 80), `up` logs why and goes on without it
rather than taking the manager and the agent down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from treeherd.gateway.gateway import Gateway, GatewayOptions
from treeherd.gateway.manager_link import ManagerLink

__all__ = ["LocalGateway"]

log = logging.getLogger(__name__)

STOP_S = 15.0
GRACE_S = 1.0  # for the gateway's own loops to end once asked


class LocalGateway:
    name = "gateway"

    def __init__(self, options: GatewayOptions, *, link: ManagerLink | None = None) -> None:
        self.options = options
        self.gateway = Gateway(options, link=link)
        self.failure: str | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        running = asyncio.create_task(self._run_gateway(), name="local-gateway")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                # A call to the manager may be under way while the manager itself stops: do not wait
                # for its timeout, nginx is stopped below either way.
                self.gateway.stop()
                await asyncio.wait({running}, timeout=GRACE_S)
                running.cancel()
                await asyncio.wait({running}, timeout=GRACE_S)
        finally:
            stopping.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_S):
                    await self.gateway.nginx.stop()
        await self._stopping.wait()  # a component returns only when asked to stop

    async def _run_gateway(self) -> None:
        try:
            await self.gateway.run()
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            log.warning("the edge gateway stopped (%s); treeherd goes on without it", self.failure)

    def stop(self) -> None:
        self._stopping.set()
