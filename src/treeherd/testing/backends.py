"""Tiny TCP backends in their own processes (so a test can SIGKILL one) and a client that asks the local
haproxy which backend answered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

# Answers every line it reads with its own name; keeps the connection until the client closes it.
BACKEND = r"""
import socket, sys, threading
name = sys.argv[1].encode()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[2])))
server.listen(1024)
print(server.getsockname()[1], flush=True)

def serve(connection):
    with connection, connection.makefile("rb") as lines:
        for _ in lines:
            connection.sendall(name + b"\n")

while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""

START_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 3.0


class Backend:
    """One backend process named `name` on a loopback port."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, port: int) -> None:
        self.name = name
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, name: str, port: int = 0) -> Backend:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BACKEND, name, str(port), stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = await process.stdout.readline()
        if not line.strip().isdigit():
            process.kill()
            await process.wait()
            raise AssertionError(f"backend {name} did not start")
        return cls(name, process, int(line))

    def kill(self) -> None:
        """SIGKILL, as a crash would, and wait (bounded) until the process is dead and its sockets
        closed: until then the kernel still completes handshakes on its listening socket, and a
        connection it accepted for a process about to die cannot be retried elsewhere."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if state in ("Z", "X"):
                return
            time.sleep(0.0005)
        raise AssertionError(f"backend {self.name} survived SIGKILL")

    async def stop(self) -> None:
        self.kill()
        async with asyncio.timeout(START_TIMEOUT_S):
            await self.process.wait()


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    """Started backends, killed afterwards."""
    started: list[Backend] = []
    try:
        for name in names:
            started.append(await Backend.start(name))
        yield started
    finally:
        for backend in started:
            await backend.stop()


async def ask(port: int, *, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
    """One request through 127.0.0.1:`port`: the name of the backend that answered; raises on any
    failure (refused, reset, closed without an answer, timeout)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"ping\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line.endswith(b"\n"):
        raise ConnectionError(f"no answer through 127.0.0.1:{port}")
    return line.decode().strip()


class ClientLoop:
    """Sequential requests through a local port until stopped: who answered, and every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._between: list[Callable[[], None]] = []

    def between_requests(self, action: Callable[[], None]) -> None:
        """Run `action` after the current request ends and before the next starts: a backend killed
        this way has no request in flight (TCP cannot replay one that was)."""
        self._between.append(action)

    async def _run(self) -> None:
        while not self._stop.is_set():
            while self._between:
                self._between.pop(0)()
            try:
                self.answers.append(await ask(self.port))
            except (OSError, TimeoutError) as error:
                self.failures.append(repr(error))
            await asyncio.sleep(0.001)

    async def wait_for(self, count: int, *, timeout_s: float = 10.0) -> None:
        """Until `count` more requests have been answered."""
        target = len(self.answers) + count
        async with asyncio.timeout(timeout_s):
            while True:
                if len(self.answers) >= target:
                    return
                await asyncio.sleep(0.005)

    def __enter__(self) -> ClientLoop:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    async def finish(self) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(REQUEST_TIMEOUT_S * 2):
                await self._task
