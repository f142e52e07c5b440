"""The schedule benchmark's read-back of every task, in a process of its own.

A million task rows come as ~340 MB of JSON, and `json.loads` holds the interpreter's lock for its whole
call (4 s here for a million rows, more with the collector): in the benchmark's process that kept its
`/healthz` poller thread from running, and the wait was counted as a stall of the manager. This process
reads and decodes the rows and hands back only what the figures use (id, state, since), in msgpack
frames of `CHUNK` rows, so the benchmark decodes a little at a time and its poller keeps its turns.

Run as `python schedule_readback.py HOST PORT SERVICE`; frames on stdout, each a 4-byte big-endian
length and a msgpack array of [id, state, since] rows.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import Any

import msgspec

from benchlib import Api

CHUNK = 50_000
_LENGTH = struct.Struct(">I")


def main() -> None:
    host, port, service = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rows = Api(host, port).call("GET", f"/api/v1/services/{service}/tasks?all=false") or []
    out = sys.stdout.buffer
    encoder = msgspec.msgpack.Encoder()
    for start in range(0, len(rows), CHUNK):
        frame = encoder.encode(
            [[row["id"], row["state"], row["since"]] for row in rows[start : start + CHUNK]]
        )
        out.write(_LENGTH.pack(len(frame)))
        out.write(frame)
    out.flush()


async def read_task_rows(host: str, port: int, service: str) -> list[dict[str, Any]]:
    """Every task row of `service` (id, state and since only), read by a child process."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, host, str(port), service,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    rows: list[dict[str, Any]] = []
    decoder = msgspec.msgpack.Decoder(list[tuple[str, str, str]])
    try:
        while header := await child.stdout.read(_LENGTH.size):
            if len(header) < _LENGTH.size:
                header += await child.stdout.readexactly(_LENGTH.size - len(header))
            frame = await child.stdout.readexactly(_LENGTH.unpack(header)[0])
            rows.extend(
                {"id": id, "state": state, "since": since} for id, state, since in decoder.decode(frame)
            )
            await asyncio.sleep(0)
    finally:
        errors = await child.stderr.read()
        code = await child.wait()
    if code != 0:
        raise OSError(
            f"reading the tasks back failed (exit {code}): {errors.decode(errors='replace')[-300:]}"
        )
    return rows


if __name__ == "__main__":
    main()
