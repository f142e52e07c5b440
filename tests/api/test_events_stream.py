"""The SSE endpoint over a real socket: live delivery, resume by Last-Event-ID, 410 for compacted
history, and no watcher left behind when a client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from treeherd.api.app import create_app
from treeherd.api.server import ApiServer, bind_socket
from treeherd.manager.inventory import Inventory
from treeherd.model.requests import NodeCreate
from treeherd.store.memory import MemoryStore

WAIT = 5.0


@pytest.fixture
async def served() -> AsyncIterator[tuple[Inventory, int]]:
    store = MemoryStore(history=10)
    await store.open()
    inventory = Inventory(store)
    sock = bind_socket("127.0.0.1", 0)
    server = ApiServer(create_app(inventory), sock)
    task = asyncio.create_task(server.run())
    try:
        yield inventory, sock.getsockname()[1]
    finally:
        server.stop()
        await asyncio.wait_for(task, WAIT)
        sock.close()
        await store.close()


async def _open_stream(
    port: int, query: str = "", headers: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/v1/events?keepalive=0.1{query} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode()
    return reader, writer, head


async def _read_until(reader: asyncio.StreamReader, needle: bytes) -> bytes:
    buffer = b""
    while needle not in buffer:
        chunk = await asyncio.wait_for(reader.read(4096), WAIT)
        assert chunk, f"stream ended before {needle!r}; got {buffer!r}"
        buffer += chunk
    return buffer


async def test_live_events_and_disconnect_releases_the_watch(served: tuple[Inventory, int]) -> None:
    inventory, port = served
    store = inventory.store
    reader, writer, head = await _open_stream(port)
    assert head.startswith("HTTP/1.1 200") and "text/event-stream" in head
    await _read_until(reader, b": treeherd event stream")
    assert len(store._watches) == 1  # type: ignore[attr-defined]
    created = await inventory.create_node(NodeCreate(path="corp"))
    body = await _read_until(reader, b'"path":"corp"')
    assert b"event: created" in body and f"id: {created.version}".encode() in body
    writer.close()
    for _ in range(100):  # bounded: the server notices the disconnect within a keepalive or two
        if not store._watches:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert not store._watches  # type: ignore[attr-defined]


async def test_resume_with_last_event_id(served: tuple[Inventory, int]) -> None:
    inventory, port = served
    first = await inventory.create_node(NodeCreate(path="a"))
    await inventory.create_node(NodeCreate(path="b"))
    reader, writer, head = await _open_stream(port, headers=f"Last-Event-ID: {first.version}\r\n")
    assert head.startswith("HTTP/1.1 200")
    body = await _read_until(reader, b'"path":"b"')
    assert b'"path":"a"' not in body
    writer.close()


async def test_progress_event_advances_the_resume_point(served: tuple[Inventory, int]) -> None:
    inventory, port = served
    await inventory.create_node(NodeCreate(path="a"))
    reader, writer, _ = await _open_stream(port, query="&kind=machine")
    await inventory.create_node(NodeCreate(path="b"))
    body = await _read_until(reader, b"event: progress")
    assert f"id: {inventory.store.revision}".encode() in body
    assert b'"path"' not in body  # nodes are filtered out
    writer.close()


async def test_compacted_history_answers_410(served: tuple[Inventory, int]) -> None:
    inventory, port = served
    for index in range(15):  # the fixture keeps 10 events
        await inventory.create_node(NodeCreate(path=f"n{index}"))
    reader, writer, head = await _open_stream(port, query="&since=1")
    assert head.startswith("HTTP/1.1 410")
    body = await asyncio.wait_for(reader.read(4096), WAIT)
    assert b'"error":"compacted"' in body
    writer.close()
