"""Request limits with real sockets: a client sending its headers or its body slowly is answered 408 and
cut off within a bounded time, an idle connection is closed, oversized heads and bodies are refused
(431, 413) before they are read whole; requests within the limits, kept-alive connections and long
streamed answers are untouched. Then the manager's own defaults, on a real manager."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from treeherd.api.request_limits import RequestLimits
from treeherd.api.server import ApiServer, bind_socket
from treeherd.testing.processes import ManagerProcess

LIMITS = RequestLimits(max_body_bytes=1000, max_head_bytes=2000, head_timeout_s=1.0, body_timeout_s=1.0)
BOUND_S = 3.0  # every refusal comes within this long of its limit's start


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length; /stream answers slowly, for 2 s."""
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = str(size).encode()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.5)
    else:
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    sock = bind_socket("127.0.0.1", 0)
    api = ApiServer(app, sock, limits=LIMITS)
    task = asyncio.create_task(api.run())
    await asyncio.sleep(0.1)
    try:
        yield sock.getsockname()[:2]
    finally:
        api.stop()
        await asyncio.wait_for(task, 10)
        sock.close()


async def exchange(address: tuple[str, int], *parts: bytes, pause_s: float = 0.0) -> tuple[bytes, float]:
    """Send `parts` with `pause_s` between them (stopping if the server closes); everything the server
    sent until it closed, and when it closed (seconds after connecting)."""
    reader, writer = await asyncio.open_connection(*address)
    started = time.monotonic()

    async def send() -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause_s)

    sender = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        sender.cancel()
        writer.close()
    return answer, time.monotonic() - started


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def test_slow_headers_are_cut_off_with_408(server: tuple[str, int]) -> None:
    slow = [b"GET / HTTP/1.1\r\nHost: x\r\n"] + [b"X-Drip: %d\r\n" % n for n in range(100)]
    answer, after = await exchange(server, *slow, pause_s=0.2)
    status, body = status_and_body(answer)
    assert status == 408 and body["error"] == "timeout"
    assert "headers did not arrive within 1 s" in body["detail"]
    assert LIMITS.head_timeout_s <= after < LIMITS.head_timeout_s + BOUND_S


async def test_an_idle_connection_is_closed(server: tuple[str, int]) -> None:
    answer, after = await exchange(server)
    assert answer == b""
    assert after < LIMITS.head_timeout_s + BOUND_S


async def test_a_slow_body_is_cut_off_with_408(server: tuple[str, int]) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    answer, after = await exchange(server, head, *[b"x" * 10] * 50, pause_s=0.2)
    status, body = status_and_body(answer)
    assert status == 408 and "body did not arrive within 1 s" in body["detail"]
    assert after < LIMITS.body_timeout_s + BOUND_S


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: tuple[str, int]) -> None:
    answer, after = await exchange(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    status, body = status_and_body(answer)
    assert status == 413 and body == {"error": "too_large", "detail": body["detail"]}
    assert "exceeds" in body["detail"] and after < 1.0


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(server: tuple[str, int]) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"100\r\n" + b"y" * 256 + b"\r\n"] * 8
    answer, _ = await exchange(server, head, *chunks, pause_s=0.05)
    assert status_and_body(answer)[0] == 413


async def test_oversized_headers_are_refused_with_431(server: tuple[str, int]) -> None:
    answer, _ = await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"z" * 3000 + b"\r\n\r\n")
    status, body = status_and_body(answer)
    assert status == 431 and "headers exceed 2000 bytes" in body["detail"]


async def test_requests_within_the_limits_and_long_answers_are_untouched(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    try:
        for size in (0, 1000):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == str(size).encode()
            await asyncio.sleep(LIMITS.head_timeout_s * 0.6)  # idle between requests, under the limit
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        streamed = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
        assert streamed.count(b"tick") == 4  # 2 s of answer: longer than both time limits
    finally:
        writer.close()


def test_the_manager_refuses_an_oversized_body_with_its_limit_in_words(tmp_path: Any) -> None:
    with ManagerProcess(tmp_path / "data") as manager:
        host, port = manager.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                b"POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (5 * 1024 * 1024)
            )
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status, body = status_and_body(answer)
        assert status == 413
        assert body["detail"] == "the request's body exceeds 4 MiB: send less at a time"
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"z" * 70_000 + b"\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert status_and_body(answer)[0] == 431


def test_the_servers_body_limit_is_the_applications() -> None:
    from treeherd.api.app import MAX_BODY_BYTES

    assert RequestLimits().max_body_bytes == MAX_BODY_BYTES


async def test_the_limits_hold_over_tls(tmp_path: Any) -> None:
    """The same protocol under TLS: slow headers are cut off with 408 once the handshake is done."""
    import ssl

    from treeherd.manager.cluster_ca import ClusterAuthority
    from treeherd.runtime import utc_now

    authority = ClusterAuthority.open(tmp_path / "data", utc_now())
    cert, key = authority.server_files(("127.0.0.1",), utc_now())
    sock = bind_socket("127.0.0.1", 0)
    api = ApiServer(app, sock, tls=(cert, key, tmp_path / "data" / "ca.crt"), limits=LIMITS)
    task = asyncio.create_task(api.run())
    await asyncio.sleep(0.1)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "data" / "ca.crt"))
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2], ssl=context)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        async with asyncio.timeout(10):
            for n in range(100):
                if reader.at_eof():
                    break
                writer.write(b"X-Drip: %d\r\n" % n)
                try:
                    answer += await asyncio.wait_for(reader.read(4096), 0.2)
                except TimeoutError:
                    continue
                except (ConnectionError, ssl.SSLError):
                    break
                if not answer or b"\r\n\r\n" in answer:
                    break
        writer.close()
        assert status_and_body(answer)[0] == 408
        assert time.monotonic() - started < LIMITS.head_timeout_s + BOUND_S
    finally:
        api.stop()
        async with asyncio.timeout(10):
            await task
        sock.close()
