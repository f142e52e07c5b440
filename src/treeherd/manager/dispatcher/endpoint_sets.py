"""Agents' endpoint sets into the endpoint registry: each session's sets are applied one at a time,
and only the latest when several arrive while one is being written (each set replaces the last)."""

from __future__ import annotations

import asyncio
import logging

from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.manager.endpoints import Registry
from treeherd.model.errors import TreeherdError
from treeherd.model.wire import EndpointSet

__all__ = ["apply_endpoint_set"]

# The dispatcher's logger: its records keep the component's name whichever of its modules writes them.
log = logging.getLogger(__name__)


def apply_endpoint_set(registry: Registry, session: AgentSession, message: EndpointSet) -> None:
    """Apply the agent's endpoint sets one at a time, the latest one only if several queue up."""
    session.endpoints_pending = message.endpoints
    if session.endpoints_sync is None or session.endpoints_sync.done():
        session.endpoints_sync = asyncio.create_task(_sync_endpoints(session, registry))


async def _sync_endpoints(session: AgentSession, registry: Registry) -> None:
    while session.endpoints_pending is not None:
        endpoints, session.endpoints_pending = session.endpoints_pending, None
        try:
            await registry.agent_endpoints(session.machine_id, endpoints)
        except TreeherdError as error:
            log.warning("endpoints of agent %s not recorded: %s", session.hostname, error)
