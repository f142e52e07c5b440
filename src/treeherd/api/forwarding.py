"""A manager among several on etcd: its answers carry the store revision they were read at, and a
follower forwards every write to the leader.

`FollowerForwarding` wraps the API's ASGI app. A read (GET, HEAD, OPTIONS) is served from this manager's
own watch-fed working set, with `X-Treeherd-Revision: N` saying which store revision it reflects, unless
it needs what only the leader runs (agents' logs, the endpoint registry: the app refuses it with
`leader_only`), in which case it goes to the leader as a write does. Any other request to a follower is
sent on to the leader whole (method, path, query, headers, body) and the leader's answer streamed back
once this manager's copy has caught up with it (a client reads its write back from the follower it wrote
through); with etcd out of reach, no leader elected, or a request already forwarded once, the answer is
503 with the reason. WebSockets (the agent channel) are not forwarded: a follower refuses agents with
the leader's URL instead (`manager.leadership.FollowerDoor`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec

from treeherd.manager.leadership import Leadership
from treeherd.model.errors import LeaderOnly, NoLeader, TreeherdError
from treeherd.model.views import ApiError

REVISION_HEADER = b"x-treeherd-revision"
FORWARDED_HEADER = "x-treeherd-forwarded-by"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
FORWARD_TIMEOUT_S = 60.0
CATCH_UP_S = 2.0  # how long a forwarded write's answer waits for this manager's copy to reach it
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"}


class FollowerForwarding:
    """The ASGI wrapper; `revision()` is the store revision this manager has applied, `applied(N)`
    returns once it has applied revision N."""

    def __init__(
        self,
        app: Any,
        leadership: Leadership,
        revision: Callable[[], int],
        applied: Callable[[int], Awaitable[None]],
        *,
        verify: str | bool = True,
    ) -> None:
        self._app = app
        self._applied = applied  # returns once this manager's copy has taken in a revision
        self._leadership = leadership
        self._revision = revision
        self._client: httpx.AsyncClient | None = None
        self._verify = verify  # the cluster CA's certificate file, for a leader at an https URL

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._leadership.role == "leader":
            await self._app(scope, receive, self._stamped(send))
        elif scope["method"] not in READS:
            await self._forward(scope, receive, send)
        elif await self._answered_here(scope, receive, send):
            return
        else:
            await self._forward(scope, _no_body, send)

    async def _answered_here(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Serve a read from this manager's copy; False (nothing sent) when the app refused it as one
        only the leader can answer."""
        held: list[dict[str, Any]] = []  # a 503's start and body, until it is known not to be leader_only
        refused = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 503:
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                body = b"".join(m.get("body", b"") for m in held[1:]) + message.get("body", b"")
                if message.get("more_body"):
                    held.append(message)
                    return
                if _error_code(body) == LeaderOnly.code:
                    refused = True
                    return
                await stamped(held[0])
                await send({"type": "http.response.body", "body": body})
                held.clear()
                return
            await stamped(message)

        stamped = self._stamped(send)
        await self._app(scope, receive, sending)
        return not refused

    def _stamped(self, send: Any) -> Any:
        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((REVISION_HEADER, str(self._revision()).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return stamped

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        leader = self._leadership.leader
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
        if any(name.lower() == FORWARDED_HEADER for name, _ in headers):
            await _refuse(
                send, "this manager is not the leader either: the leader changed, retry", NoLeader.code
            )
            return
        problem = self._leadership.problem
        if problem is not None:
            await _refuse(
                send,
                f"this manager cannot write: the store is out of reach ({problem}); it resumes by itself once"
                f" etcd answers again (reads still answer, from revision {self._revision()})",
            )
            return
        if leader is None or leader.url == self._leadership.record.url:
            await _refuse(
                send, "no manager leads now (an election is under way): retry in a few seconds", NoLeader.code
            )
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, verify=self._verify)
        target = leader.url.rstrip("/") + scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        kept.append((FORWARDED_HEADER, self._leadership.record.url))
        request = self._client.build_request(
            scope["method"], target + ("?" + query if query else ""), headers=kept, content=bytes(body)
        )
        started = False
        try:
            answer = await self._client.send(request, stream=True)
            try:
                await self._caught_up(answer.headers.get(REVISION_HEADER.decode()))
                out = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in answer.headers.multi_items()
                    if k.lower() not in _HOP_BY_HOP
                ]
                await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
                started = True
                # Streamed as it comes: a followed log (`--follow`) goes on for as long as the client reads.
                async for chunk in answer.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                await answer.aclose()
        except httpx.HTTPError as error:
            if not started:
                await _refuse(
                    send, f"the leader at {leader.url} did not answer ({error.__class__.__name__}): retry"
                )
                return
        await send({"type": "http.response.body", "body": b""})

    async def _caught_up(self, revision: str | None) -> None:
        """Wait (briefly) until this manager's own copy has the leader's answer's revision: a client
        reads its write back from the follower it wrote through."""
        if revision is None or not revision.isdigit():
            return
        with contextlib.suppress(TimeoutError, TreeherdError):
            async with asyncio.timeout(CATCH_UP_S):
                await self._applied(int(revision))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error_code(body: bytes) -> str | None:
    try:
        answer = msgspec.json.decode(body, type=ApiError)
    except msgspec.DecodeError:
        return None
    return answer.error


async def _refuse(send: Any, detail: str, error: str = "unavailable") -> None:
    body = msgspec.json.encode(ApiError(error=error, detail=detail))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
