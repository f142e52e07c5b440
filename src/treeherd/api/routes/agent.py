"""/api/v1/agent: the agent channel, one WebSocket per agent, handed to the dispatcher.

The handler accepts the WebSocket, wraps it in a `transport.channel.ServerChannel` and lets
`Dispatcher.serve` run the session until it ends; the channel is closed whatever happens. The dispatcher
comes in as the `dispatcher` dependency: `agent_router(provide)` provides it along with the route (on a
manager that does not lead, what stands in for it refuses the agent with the leader's URL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Router, WebSocket, websocket
from litestar.di import Provide

from treeherd.manager.dispatcher import Dispatcher
from treeherd.transport.channel import AGENT_PATH, ChannelClosed, ServerChannel

__all__ = ["agent_channel", "agent_router"]


@websocket(AGENT_PATH)
async def agent_channel(socket: WebSocket[Any, Any, Any], dispatcher: Any) -> None:
    """One agent's session: Register, then heartbeats, status reports and assignments (msgpack frames).
    `dispatcher` is a `Dispatcher`, or on a manager that does not lead what refuses the agent with the
    leader's URL (typed loosely: the framework would check the value against the annotation)."""
    channel = ServerChannel(socket)
    try:
        await channel.accept()
    except ChannelClosed:
        return
    caller = socket.scope.get("state", {}).get("caller")
    identity = getattr(caller, "node_id", None)
    role = getattr(caller, "node_role", "worker")
    try:
        await dispatcher.serve(channel, address=channel.remote_address, identity=identity, identity_role=role)
    finally:
        await channel.close()


def agent_router(dispatcher: Dispatcher | Callable[[], Dispatcher], guard: Any = None) -> Router:
    """The agent channel's route with its dispatcher (or what gives the current one), ready for the
    app's `route_handlers`."""

    def provide_dispatcher() -> Dispatcher:
        return dispatcher if isinstance(dispatcher, Dispatcher) else dispatcher()

    return Router(
        path="/",
        route_handlers=[agent_channel],
        dependencies={"dispatcher": Provide(provide_dispatcher, sync_to_thread=False)},
        guards=[guard] if guard is not None else None,
    )
