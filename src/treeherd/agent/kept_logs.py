"""The output of finished tasks, kept after their directories are removed, for `treeherd task logs`.

When the manager lets go of a finished task (it ended and was told to shut down) the executor removes
the task's directory, and with it the only record of why the task failed. So, before that, the agent
moves the task's output files to `<root>/<task id>/` (see `logfiles.keep`), beside a small
`kept.json` naming the task's service and slot. The agent keeps the output of the newest `history`
finished tasks per slot (per machine for a global service), as the manager keeps their tasks in the
service's history (the cluster's `task_history`, 5 by default), and at most `limit` in all; older
output is removed as newer output comes in.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import msgspec

from treeherd.executors import logfiles
from treeherd.model.services import Task

__all__ = ["KeptEntry", "KeptLogs", "to_remove"]

log = logging.getLogger(__name__)

META = "kept.json"


class KeptEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One finished task whose output is kept."""

    task_id: str
    service_id: str
    slot: str  # the slot number, or the machine of a global service's task
    created_at: datetime


def to_remove(entries: Sequence[KeptEntry], history: int, limit: int) -> list[str]:
    """The ids of the entries to drop: all but the newest `history` per (service, slot), then the
    oldest beyond `limit` in all."""
    by_slot: dict[tuple[str, str], list[KeptEntry]] = {}
    for entry in entries:
        by_slot.setdefault((entry.service_id, entry.slot), []).append(entry)
    drop: list[str] = []
    kept: list[KeptEntry] = []
    for group in by_slot.values():
        group.sort(key=lambda e: (e.created_at, e.task_id))
        cut = max(0, len(group) - max(1, history))
        drop.extend(e.task_id for e in group[:cut])
        kept.extend(group[cut:])
    kept.sort(key=lambda e: (e.created_at, e.task_id))
    drop.extend(e.task_id for e in kept[: max(0, len(kept) - limit)])
    return drop


class KeptLogs:
    """The kept output under `root` (one directory per task)."""

    def __init__(self, root: Path, *, history: int = 5, limit: int = 1000) -> None:
        self.root = root
        self.history = history
        self.limit = limit

    def directory(self, task_id: str) -> Path | None:
        """Where a task's kept output is, if it is kept here."""
        if not task_id or "/" in task_id or task_id.startswith("."):
            return None
        path = self.root / task_id
        return path if (path / META).is_file() else None

    def keep(self, task: Task, source: Path) -> None:
        """Move the output of finished `task` out of its directory `source`, then drop what is too old."""
        destination = self.root / task.id
        try:
            if not logfiles.keep(source, destination):
                return
            slot = str(task.slot) if task.slot else (task.machine_id or "")
            entry = KeptEntry(
                task_id=task.id, service_id=task.service_id, slot=slot, created_at=task.created_at
            )
            (destination / META).write_bytes(msgspec.json.encode(entry))
            self.prune()
        except OSError as error:
            log.warning("task %s: could not keep its output: %s", task.id, error)

    def entries(self) -> list[KeptEntry]:
        found: list[KeptEntry] = []
        if not self.root.is_dir():
            return found
        for meta in self.root.glob(f"*/{META}"):
            try:
                found.append(msgspec.json.decode(meta.read_bytes(), type=KeptEntry))
            except (OSError, msgspec.DecodeError):
                continue
        return found

    def prune(self) -> None:
        for task_id in to_remove(self.entries(), self.history, self.limit):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.root / task_id)
