"""The writes of one loop turn reach the transport as one, and nothing is lost or sent after close."""

from __future__ import annotations

import asyncio

from treeherd.api.joined_writes import JoinedWrites


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_turn_go_out_together() -> None:
    raw = RecordingTransport()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    joined.write(b"")
    joined.writelines([b"{", b"}"])
    assert raw.writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    joined.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"next"]
    assert joined.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's


async def test_close_sends_what_waits_and_later_writes_are_dropped() -> None:
    raw = RecordingTransport()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"last answer")
    joined.close()
    assert raw.writes == [b"last answer"] and raw.closed
    joined.write(b"too late")
    await asyncio.sleep(0)
    assert raw.writes == [b"last answer"]


async def test_abort_drops_what_waits() -> None:
    raw = RecordingTransport()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"never sent")
    joined.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.aborted
