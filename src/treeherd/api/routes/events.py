"""/api/v1/events: the watch stream as Server-Sent Events, resumable from a revision.

Each event is one SSE message (`event:` created|updated|deleted, `data:` the JSON `Event`). The last
message of each transaction carries `id: REVISION`, so `Last-Event-ID` (or `?since=`) resumes after the
last complete transaction. When idle, a `progress` message with the current revision keeps the
connection alive and the resume point fresh even if a kind filter hides every change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import Parameter
from litestar.response import Stream

from treeherd.manager.inventory import Inventory
from treeherd.model.errors import Compacted, InvalidInput, WatchLagged
from treeherd.model.kinds import KINDS
from treeherd.model.security import Role
from treeherd.model.views import ApiError
from treeherd.store.base import Store, Watch

KEEPALIVE_SECONDS = 15.0
_encode = msgspec.json.Encoder().encode


class EventController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get(
        "/",
        summary="Follow changes (Server-Sent Events); resume with ?since=REVISION or Last-Event-ID",
        media_type="text/event-stream",
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        inventory: Inventory,
        since: int | None = Parameter(default=None, description="deliver changes after this revision"),
        kind: list[str] | None = Parameter(default=None, description="only these kinds (node, machine, ...)"),
        keepalive: float = Parameter(default=KEEPALIVE_SECONDS, gt=0.05, le=300.0),
    ) -> Stream:
        kinds = frozenset(kind or ())
        unknown = kinds - KINDS.keys()
        if unknown:
            raise InvalidInput(
                f"unknown kind {sorted(unknown)[0]!r}: choose from {', '.join(sorted(KINDS))}", field="kind"
            )
        if since is None:
            last_id = request.headers.get("last-event-id")
            if last_id:
                try:
                    since = int(last_id)
                except ValueError:
                    raise InvalidInput(
                        "Last-Event-ID must be a revision number", field="Last-Event-ID"
                    ) from None
        if since is not None and since < 0:
            raise InvalidInput("since must not be negative", field="since")
        # Tokens (names, roles, digests) and user certificates are the administrators' to see, here as
        # in `GET /tokens` and `GET /certs`.
        caller = request.scope.get("state", {}).get("caller")
        admin = caller is None or caller.role is Role.ADMIN
        hidden = frozenset() if admin else frozenset({"token", "user_cert"})
        store = inventory.store
        watch = store.watch(since)  # raises Compacted (410) before the stream starts
        return Stream(
            _stream(store, watch, kinds, keepalive, hidden),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _stream(
    store: Store, watch: Watch, kinds: frozenset[str], keepalive: float, hidden: frozenset[str] = frozenset()
) -> AsyncIterator[bytes]:
    sent: int | None = None
    try:
        # An opening comment flushes the headers so a client knows the stream is live.
        yield b": treeherd event stream\n\n"
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    change = await anext(watch)
            except TimeoutError:
                revision = store.revision
                if sent is None or revision > sent:
                    sent = revision
                    yield b'event: progress\nid: %d\ndata: {"revision": %d}\n\n' % (revision, revision)
                else:
                    yield b": keepalive\n\n"
                continue
            except StopAsyncIteration:
                return
            except WatchLagged as lagged:
                watch.close()
                try:
                    watch = store.watch(lagged.last_revision)
                except Compacted as error:
                    body = _encode(ApiError(error=error.code, detail=error.detail, field=error.field))
                    yield b"event: error\ndata: " + body + b"\n\n"
                    return
                continue
            events = [
                e
                for e in change.events
                if (not kinds or e.object.kind in kinds) and e.object.kind not in hidden
            ]
            for index, event in enumerate(events):
                last = index == len(events) - 1
                head = b"event: %s\n" % event.type.encode()
                if last:
                    head += b"id: %d\n" % change.revision
                    sent = change.revision
                yield head + b"data: " + _encode(event) + b"\n\n"
    finally:
        watch.close()
