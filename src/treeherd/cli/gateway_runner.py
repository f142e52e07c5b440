"""Runs the edge gateway as the process's one component until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from treeherd.gateway.gateway import Gateway, GatewayOptions


async def _serve(options: GatewayOptions) -> None:
    gateway = Gateway(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_gateway(options: GatewayOptions) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("treeherd").setLevel(logging.INFO)
    asyncio.run(_serve(options))
