"""A process task's directory on the agent's machine, `<root>/tasks/<task id>/`, and the small JSON
files in it: `spawn.json` (written before the process is started), `process.json` (pid and start
time, once it runs), `limits.json` (see `limits`), `exit.json` (the exit status once collected);
also its output (`logfiles`) and `work/`. Every write is atomic: a reader, or the next agent after a
crash, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TypeVar

import msgspec

from treeherd.executors.base import FatalError
from treeherd.executors.process_groups import ProcessRecord

__all__ = ["EXIT", "LIMITS", "PROCESS", "SPAWN", "SpawnIntent", "TaskFiles", "remove_tree"]

log = logging.getLogger(__name__)
S = TypeVar("S", bound=msgspec.Struct)

SPAWN = "spawn.json"
PROCESS = "process.json"
EXIT = "exit.json"
LIMITS = "limits.json"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SpawnIntent(msgspec.Struct, frozen=True, kw_only=True):
    """Written before a task's process is started: a crash between the start and `process.json`
    leaves this behind, telling the next agent to look for the process by its environment."""

    started_at: float


class TaskFiles:
    """A task's directory and the small JSON files in it."""

    def __init__(self, root: Path, task_id: str) -> None:
        if not _SAFE_ID.fullmatch(task_id):
            raise FatalError(f"task id {task_id!r} cannot name a directory")
        self.task_id = task_id
        self.dir = root / "tasks" / task_id

    @property
    def work(self) -> Path:
        return self.dir / "work"

    def read(self, name: str, kind: type[S]) -> S | None:
        try:
            return msgspec.json.decode((self.dir / name).read_bytes(), type=kind)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError as error:
            log.warning("task %s: ignoring unreadable %s: %s", self.task_id, name, error)
            return None

    def write(self, name: str, value: msgspec.Struct) -> None:
        """Atomically: a reader (or the next agent) sees the old file or the new one, never half."""
        temporary = self.dir / f".{name}.tmp"
        temporary.write_bytes(msgspec.json.encode(value))
        os.replace(temporary, self.dir / name)

    def exists(self, name: str) -> bool:
        return (self.dir / name).exists()

    def process(self) -> ProcessRecord | None:
        return self.read(PROCESS, ProcessRecord)


def remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
