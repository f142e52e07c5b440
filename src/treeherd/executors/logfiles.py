"""A task's output files: opened for the child, rotated by copy-truncate, read back with tail and follow.

Why the child writes a file itself: a task must keep running, and keep logging, while its agent is
away (restarted, upgraded, crashed). Its stdout and stderr are therefore one file it holds open with
O_APPEND, not a pipe the agent drains: nothing blocks when nobody reads, and nothing is lost or
broken (no SIGPIPE) when the agent dies. A detached log-copier process per task would avoid the
rotation compromise below, at the cost of one more process per task that can itself die.

Rotation is copy-truncate, done by the agent (its controller's `wait` loop calls `rotate`):
`output.log` is copied to `output.log.1` (older copies shift to `.2` ... `.<backups>`, the oldest is
dropped) and truncated; a file that grew far past its limit while no agent ran is cut into several
backups at once, keeping only what the backups hold. O_APPEND makes the child's next write land at the new end, so the file gets
no hole. The price: bytes the child writes between the end of the copy and the truncate are lost
(the copy re-reads until it reaches the end, so the window is a few microseconds), and while no
agent runs nothing rotates, so the file may outgrow its limit until the next agent rotates it.

Readers and the rotator run in the agent's one event loop and neither awaits in the middle of its
work, so a reader never sees a half-done rotation. A reader notices that rotations happened since its
last read by `output.log.1` being another file (each rotation makes a new `.1`), and then finds the
rest of what it was reading in the backups (by where the `.1` it knew has moved to). A reader in
another process may miss or repeat output around a rotation.

A finished task's output outlives its directory: `keep` moves it to a directory of kept output
before the task's directory is removed, and `last_line` gives the line that says why a task failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "LOG_NAME",
    "LogReader",
    "backup_path",
    "follow_logs",
    "keep",
    "last_line",
    "open_for_child",
    "rotate",
]

LOG_NAME = "output.log"
CHUNK = 64 * 1024
COPY_BUFFER = 1024 * 1024


def backup_path(directory: Path, index: int) -> Path:
    return directory / f"{LOG_NAME}.{index}"


def open_for_child(directory: Path) -> int:
    """The file descriptor the child gets as stdout and stderr (the caller closes its copy)."""
    return os.open(directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def rotate(directory: Path, max_bytes: int, backups: int) -> bool:
    """Rotate `output.log` if it has grown past `max_bytes` (0: never); True if it did.

    Normally the whole file becomes `.1`. A file far over its limit (over `backups * max_bytes`: no
    agent rotated it for a while) is cut into pieces of `max_bytes`, of which the newest `backups` are
    kept, so that one rotation copies at most about that much, as it runs on the event loop. (A reader
    following the output right then may miss or repeat some of it.)"""
    path = directory / LOG_NAME
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if max_bytes <= 0 or size <= max_bytes:
        return False
    if backups <= 0:
        os.truncate(path, 0)
        return True
    pieces = 1 if size <= max(2, backups) * max_bytes else min(backups, -(-size // max_bytes))
    for index in range(backups, 0, -1):
        backup = backup_path(directory, index)
        if index + pieces > backups:
            backup.unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.replace(backup, backup_path(directory, index + pieces))
    temporary = directory / f".{LOG_NAME}.rotating"
    with open(path, "rb") as source:
        for piece in range(pieces, 0, -1):  # the oldest first; `.1` ends where the file does
            start = 0 if pieces == 1 else max(0, size - piece * max_bytes)
            source.seek(start)
            with open(temporary, "wb") as copy:
                if piece > 1:
                    _copy(source, copy, size - (piece - 1) * max_bytes - start)
                else:
                    # Copy until the end, then truncate at once: what the child writes in between is lost.
                    _copy(source, copy, None)
                    os.truncate(path, 0)
            os.replace(temporary, backup_path(directory, piece))
    return True


def keep(directory: Path, destination: Path) -> bool:
    """Move `output.log` and its backups from `directory` into `destination` (made if needed, emptied
    of an earlier copy first); True if there was any output to keep. Both sit on one file system, so
    each file is renamed, not copied."""
    names = [LOG_NAME] + [p.name for p in sorted(directory.glob(f"{LOG_NAME}.*")) if p.name[-1].isdigit()]
    present = [name for name in names if (directory / name).is_file()]
    if not present:
        return False
    destination.mkdir(parents=True, exist_ok=True)
    for old in destination.glob(f"{LOG_NAME}*"):
        old.unlink(missing_ok=True)
    for name in present:
        with contextlib.suppress(FileNotFoundError):
            os.replace(directory / name, destination / name)
    return True


def last_line(directory: Path, limit: int = 200) -> str:
    """The last non-empty line the task wrote (cut to `limit` characters), "" if none."""
    for path in (directory / LOG_NAME, backup_path(directory, 1)):
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(max(0, size - 4096))
                block = file.read()
        except FileNotFoundError:
            continue
        for line in reversed(block.splitlines()):
            text = line.decode("utf-8", "replace").strip()
            if text:
                return text if len(text) <= limit else text[: limit - 3] + "..."
    return ""


def _copy(source: BinaryIO, copy: BinaryIO, length: int | None) -> None:
    """`length` bytes (None: up to the end) from `source`'s position."""
    while length is None or length > 0:
        block = source.read(COPY_BUFFER if length is None else min(COPY_BUFFER, length))
        if not block:
            return
        copy.write(block)
        if length is not None:
            length -= len(block)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file a backup is: its inode and modification time (renames keep both; a freed inode
    number may be reused by a later copy, which then has another modification time)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")  # kept open across rotations; closed by the reader
    except FileNotFoundError:
        return None


def _size(file: BinaryIO) -> int:
    return os.fstat(file.fileno()).st_size


def _tail_start(files: list[BinaryIO], lines: int) -> tuple[int, int]:
    """Where the last `lines` lines of `files` (newest first, read as one stream) begin: (index, offset).

    A final line without a newline counts as a line; a newline at the very end does not start one."""
    if lines <= 0:
        return 0, _size(files[0])
    wanted = lines
    at_end = True
    for index, file in enumerate(files):
        end = _size(file)
        while end > 0:
            start = max(0, end - CHUNK)
            file.seek(start)
            block = file.read(end - start)
            limit = len(block)
            if at_end and block:
                at_end = False
                if block.endswith(b"\n"):
                    limit -= 1
            while (newline := block.rfind(b"\n", 0, limit)) >= 0:
                wanted -= 1
                if wanted == 0:
                    return index, start + newline + 1
                limit = newline
            end = start
    return len(files) - 1, 0


class LogReader:
    """Reads a task's output from a chosen start, then whatever is appended, across rotations.

    Each `read()` is synchronous (no await), hence atomic with respect to `rotate` in the same loop."""

    def __init__(self, directory: Path, *, tail: int | None, backups: int) -> None:
        self.directory = directory
        self.backups = backups
        self._live_path = directory / LOG_NAME
        self._live = _open(self._live_path)
        self._pos = 0
        self._marker = _identity(backup_path(directory, 1))  # which `.1` existed when we last read
        # Backup files to read (file, offset), oldest first, before going on in the live file.
        self._queue: list[tuple[BinaryIO, int]] = []
        older = [f for f in (_open(backup_path(directory, i)) for i in range(1, backups + 1)) if f]
        chain = older if self._live is None else [self._live, *older]
        if not chain:
            return
        if tail is None:
            start_index, start_offset = len(chain) - 1, 0
        else:
            start_index, start_offset = _tail_start(chain, tail)
        for index in range(len(chain) - 1, -1, -1):
            file = chain[index]
            if file is self._live:
                self._pos = start_offset if index == start_index else 0
            elif index < start_index:
                self._queue.append((file, 0))
            elif index == start_index:
                self._queue.append((file, start_offset))
            else:
                file.close()

    def read(self) -> bytes:
        """The next chunk of output (b"" when there is nothing new now)."""
        self._notice_rotations()
        while self._queue:
            file, offset = self._queue[0]
            file.seek(offset)
            chunk = file.read(CHUNK)
            if chunk:
                self._queue[0] = (file, offset + len(chunk))
                return chunk
            file.close()
            self._queue.pop(0)
        if self._live is None:
            self._live = _open(self._live_path)
            self._pos = 0
            if self._live is None:
                return b""
        size = _size(self._live)
        if size < self._pos:  # truncated by someone other than `rotate` (e.g. by hand): start over
            self._pos = 0
        self._live.seek(self._pos)
        chunk = self._live.read(min(CHUNK, size - self._pos))
        self._pos += len(chunk)
        return chunk

    def _notice_rotations(self) -> None:
        current = _identity(backup_path(self.directory, 1))
        if current == self._marker or current is None:
            return
        # Rotations happened. The `.1` we knew has moved to `.k+1` after k rotations, so what we were
        # reading in the live file is now in `.k`, and `.k-1` ... `.1` came after it.
        backups = [backup_path(self.directory, i) for i in range(1, self.backups + 1)]
        identities = [_identity(path) for path in backups]
        if self._marker is not None and self._marker in identities:
            rotations = identities.index(self._marker)
        else:  # no `.1` before, or it was dropped: take every backup there is
            rotations = sum(identity is not None for identity in identities)
        for index in range(rotations, 0, -1):
            file = _open(backups[index - 1])
            if file is not None:
                self._queue.append((file, self._pos if index == rotations else 0))
        self._pos = 0
        self._marker = current

    def close(self) -> None:
        for file, _ in self._queue:
            file.close()
        self._queue.clear()
        if self._live is not None:
            self._live.close()
            self._live = None


async def follow_logs(
    directory: Path,
    *,
    follow: bool,
    tail: int | None,
    backups: int,
    running: Callable[[], bool],
    poll_s: float = 0.2,
) -> AsyncIterator[bytes]:
    """The last `tail` lines (None: all there is), then, with `follow`, new output until `running()`
    is false (checked before draining, so what the task wrote before it ended is still read)."""
    reader = LogReader(directory, tail=tail, backups=backups)
    try:
        while True:
            alive = follow and running()
            while chunk := reader.read():
                yield chunk
            if not alive:
                return
            await asyncio.sleep(poll_s)
    finally:
        reader.close()
