"""The gateway's side of the manager's API: the routing snapshot, the event stream, and what the
gateway writes back (its events, ejections, availability reports).

The HTTP client is the synchronous one the CLI uses; calls run in worker threads so the gateway's
event loop never blocks. The event stream is followed in its own thread that hands events to the loop,
reconnects with the last revision it saw, and starts over from a fresh snapshot when the manager has
compacted that revision away. Every wait is bounded.

`manager_url` may name several managers (separated by commas): each call starts with the one that
answered last and passes over one that cannot be reached or answers 503 (`transport.client`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import Any, Literal

import msgspec

from treeherd.gateway.mirror import ROUTING_KINDS
from treeherd.model.availability import AvailabilityReport
from treeherd.model.events import Event
from treeherd.model.gateway import BackendState, Figure, GatewayEventType, GatewayRecord
from treeherd.model.gateway_requests import BackendUpdate, GatewayEventIn
from treeherd.model.routing import RoutingSnapshot
from treeherd.transport.client import Client, ClientError, manager_urls

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 10.0
STREAM_KEEPALIVE_S = 1.0
STREAM_SILENCE_S = 15.0
RECONNECT_S = 0.5
_decode_event = msgspec.json.Decoder(Event).decode


class Resync:
    """Put on the event queue when the stream cannot resume: take a fresh snapshot."""


class ManagerLink:
    """Talks to the managers on behalf of one gateway."""

    def __init__(
        self,
        manager_url: str,
        gateway_name: str,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`token` and `tls`: the credential and trust of a gateway in the manager's own process
        (`treeherd up`); by default those of transport.credentials (environment, then context)."""
        self._urls = manager_urls(manager_url)
        self._token = token
        self._tls = tls
        self.gateway_name = gateway_name
        self._stop = threading.Event()
        self._stream_client: Client | None = None

    @property
    def manager_url(self) -> str:
        """The manager that answered last (the first one named, before any answer)."""
        return self._urls[0]

    def _client(self) -> Client:
        return Client(self._urls, timeout=REQUEST_TIMEOUT_S, token=self._token, tls=self._tls)

    def _answered(self, client: Client) -> None:
        """Start the next calls with the manager that answered (threads share the list: replaced whole)."""
        url = client.base_url
        if url != self._urls[0]:
            self._urls = [url, *(other for other in self._urls if other != url)]

    def _call(self, method: str, path: str, body: Any = None, type: Any = Any) -> Any:
        with self._client() as client:
            try:
                return client.request(method, path, body, type=type)
            finally:
                self._answered(client)

    async def snapshot(self) -> RoutingSnapshot:
        result: RoutingSnapshot = await asyncio.to_thread(
            self._call, "GET", "/api/v1/gateway/snapshot", None, RoutingSnapshot
        )
        return result

    async def record(
        self,
        type: GatewayEventType,
        reason: str,
        figures: dict[str, Figure] | None = None,
        config_sha256: str | None = None,
        alert: Literal["crash_loop"] | None = None,
    ) -> None:
        """Record a gateway event; a manager that cannot be reached costs a log line, not the gateway."""
        body = GatewayEventIn(
            type=type, reason=reason[:2000], figures=figures or {}, config_sha256=config_sha256, alert=alert
        )
        log.info("gateway %s: %s: %s", self.gateway_name, type, reason)
        try:
            await asyncio.to_thread(self._call, "POST", f"/api/v1/gateways/{self.gateway_name}/events", body)
        except ClientError as error:
            log.warning("could not record the gateway event (%s): %s", type, error)

    async def crash_loop_firing(self) -> bool:
        """Does this gateway's record hold a firing crash-loop alert (left by an earlier run)?"""
        try:
            record: GatewayRecord = await asyncio.to_thread(
                self._call, "GET", f"/api/v1/gateways/{self.gateway_name}", None, GatewayRecord
            )
        except ClientError:
            return False  # no record yet, or no manager: nothing to resolve
        return record.crash_loop is not None

    async def set_backend(self, path: str, hostname: str, update: BackendUpdate) -> BackendState:
        stored: BackendState = await asyncio.to_thread(
            self._call, "PUT", f"/api/v1/backends/{path}/{hostname}", update, BackendState
        )
        return stored

    async def report(self, report: AvailabilityReport) -> None:
        await asyncio.to_thread(self._call, "PUT", f"/api/v1/availability/{self.gateway_name}", report)

    def follow(
        self, since: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]
    ) -> threading.Thread:
        """Start the thread that follows the event stream after revision `since` into `queue`."""
        thread = threading.Thread(
            target=self._follow,
            args=(since, loop, queue),
            name=f"gateway-{self.gateway_name}-events",
            daemon=True,
        )
        thread.start()
        return thread

    def _follow(self, since: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        last = since
        query = {"kind": sorted(ROUTING_KINDS), "keepalive": STREAM_KEEPALIVE_S}
        while not self._stop.is_set():
            client = self._client()
            self._stream_client = client
            try:
                for name, data, event_id in client.stream(
                    "/api/v1/events", {**query, "since": last}, read_timeout=STREAM_SILENCE_S
                ):
                    if self._stop.is_set():
                        return
                    self._answered(client)
                    if event_id is not None:
                        last = int(event_id)
                    if name == "error":
                        raise ClientError("the event stream ended with an error", status=410)
                    if name in ("created", "updated", "deleted"):
                        loop.call_soon_threadsafe(queue.put_nowait, _decode_event(data))
            except ClientError as error:
                if self._stop.is_set():
                    return
                if error.status == 410:
                    log.warning("the manager no longer has revision %d: starting from a fresh snapshot", last)
                    loop.call_soon_threadsafe(queue.put_nowait, Resync())
                    return
                log.warning("event stream from %s: %s; reconnecting", self.manager_url, error)
            except Exception as error:  # a closed socket while stopping, a malformed event
                if self._stop.is_set():
                    return
                log.warning("event stream from %s failed (%s); reconnecting", self.manager_url, error)
            finally:
                client.close()
            self._stop.wait(RECONNECT_S)

    def stop(self) -> None:
        self._stop.set()
        client = self._stream_client
        if client is not None:
            client.abort()
