"""Follows nginx's access logs across rotations, so no line is lost or read twice.

Each followed path has a position: the file's (device, inode) and the offset of the first byte not yet
read. Only whole lines are consumed (a line nginx is still writing waits for its newline).
- Rotation by rename (logrotate's default): the path now names another inode. The old file stays open
  and is drained until nginx writes to the new one (after `nginx -s reopen`), then read to its end one
  last time and closed.
- Rotation by truncation (copytruncate): the same inode got shorter: read again from 0.
- A restart: positions come back from the caller's saved state. A file renamed while the gateway was
  down is found again by its inode among the path's siblings (`access.log.1`, ...) and read to its end
  before the new file is read from the start.
The caller persists `positions()` together with what it derived from the lines, in one atomic write,
so a crash between reading and saving re-reads exactly the lines that were not accounted for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from io import BufferedReader

import msgspec

MAX_READ = 8 * 1024 * 1024  # per file and poll: a huge backlog is read over several polls


class FilePosition(msgspec.Struct, kw_only=True):
    device: int
    inode: int
    offset: int


class PathPosition(msgspec.Struct, kw_only=True):
    """Where reading stands for one path: its current file, and rotated files still being drained."""

    current: FilePosition | None = None
    draining: list[FilePosition] = []


class _Open:
    def __init__(self, handle: BufferedReader, position: FilePosition) -> None:
        self.handle = handle
        self.position = position


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


class LogTailer:
    """Reads new complete lines from a set of log files."""

    def __init__(self, positions: dict[str, PathPosition] | None = None) -> None:
        self._saved = dict(positions or {})
        self._current: dict[str, _Open] = {}
        self._draining: dict[str, list[_Open]] = {}
        self._paths: list[str] = []

    def follow(self, paths: Iterable[str]) -> None:
        """Follow these paths (others are dropped); a path seen for the first time is read from its start."""
        wanted = sorted(set(paths))
        for gone in set(self._paths) - set(wanted):
            self._close(gone)
        self._paths = wanted

    def _close(self, path: str) -> None:
        opened = self._current.pop(path, None)
        if opened is not None:
            opened.handle.close()
        for old in self._draining.pop(path, []):
            old.handle.close()
        self._saved.pop(path, None)

    def close(self) -> None:
        for path in list(self._current) + list(self._draining):
            self._close(path)

    def positions(self) -> dict[str, PathPosition]:
        """What to save so a restart resumes exactly here."""
        found: dict[str, PathPosition] = {}
        for path in self._paths:
            opened = self._current.get(path)
            saved = self._saved.get(path)
            current = opened.position if opened is not None else (saved.current if saved else None)
            draining = [d.position for d in self._draining.get(path, [])]
            if current is not None or draining:
                found[path] = PathPosition(
                    current=msgspec.structs.replace(current) if current else None,
                    draining=[msgspec.structs.replace(d) for d in draining],
                )
        return found

    def poll(self) -> list[bytes]:
        """Every complete line written since the last poll, oldest file first."""
        lines: list[bytes] = []
        for path in self._paths:
            lines += self._poll_path(path)
        return lines

    def _restore(self, path: str) -> None:
        """First poll of a path: reopen what the saved state names."""
        saved = self._saved.pop(path, None)
        if saved is None:
            return
        targets = [*saved.draining, *([saved.current] if saved.current else [])]
        for position in targets:
            found = self._find(path, position)
            if found is None:
                continue  # gone (deleted by the rotation): nothing left to read
            opened = self._open(found, position.offset)
            if opened is None:
                continue
            if found == path and position is saved.current:
                self._current[path] = opened
            else:
                self._draining.setdefault(path, []).append(opened)

    def _find(self, path: str, position: FilePosition) -> str | None:
        """The file with the position's inode: the path itself, or one of its rotated siblings."""
        directory, base = os.path.split(path)
        candidates = [path]
        with contextlib.suppress(OSError):
            candidates += sorted(
                os.path.join(directory or ".", name)
                for name in os.listdir(directory or ".")
                if name.startswith(base + ".")
            )
        for candidate in candidates:
            with contextlib.suppress(OSError):
                if _identity(os.stat(candidate)) == (position.device, position.inode):
                    return candidate
        return None

    def _open(self, path: str, offset: int) -> _Open | None:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - kept open across polls to survive a rename
        except OSError:
            return None
        stat = os.fstat(handle.fileno())
        if stat.st_size < offset:
            offset = 0  # truncated while we were away
        handle.seek(offset)
        return _Open(handle, FilePosition(device=stat.st_dev, inode=stat.st_ino, offset=offset))

    def _read(self, opened: _Open) -> list[bytes]:
        handle = opened.handle
        size = os.fstat(handle.fileno()).st_size
        if size < opened.position.offset:  # copytruncate: the same file started over
            opened.position.offset = 0
        handle.seek(opened.position.offset)
        data = handle.read(MAX_READ)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        opened.position.offset += end + 1
        return [line for line in data[: end + 1].split(b"\n") if line]

    def _poll_path(self, path: str) -> list[bytes]:
        if path in self._saved:
            self._restore(path)
        lines: list[bytes] = []
        try:
            stat: os.stat_result | None = os.stat(path)
        except OSError:
            stat = None
        current = self._current.get(path)
        if (
            current is not None
            and stat is not None
            and _identity(stat)
            != (
                current.position.device,
                current.position.inode,
            )
        ):
            self._draining.setdefault(path, []).append(current)  # renamed away: drain it
            current = None
            del self._current[path]
        # Rotated files first: their lines are older than the new file's.
        for old in list(self._draining.get(path, [])):
            lines += self._read(old)
        if current is None and stat is not None:
            current = self._open(path, 0)
            if current is not None:
                self._current[path] = current
        if current is not None:
            fresh = self._read(current)
            if fresh and path in self._draining:
                # nginx writes to the new file, so it has reopened its logs: finish the old ones.
                for old in self._draining.pop(path):
                    lines += self._read(old)
                    old.handle.close()
            lines += fresh
        return lines
