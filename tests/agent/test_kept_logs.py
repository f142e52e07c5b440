"""The output of finished tasks: moved aside whole, read back, dropped once out of the history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from treeherd.agent.kept_logs import KeptEntry, KeptLogs, to_remove
from treeherd.executors import logfiles
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def task(task_id: str, slot: int, created_at: datetime = T0) -> Task:
    return Task(
        id=task_id,
        service_id="s",
        service_name="web",
        slot=slot,
        spec=TaskSpec(command=["x"]),
        status=TaskStatus(state=TaskState.FAILED, timestamp=created_at),
        created_at=created_at,
        updated_at=created_at,
    )


def entry(task_id: str, minute: int, *, service: str = "s", slot: str = "1") -> KeptEntry:
    return KeptEntry(
        task_id=task_id, service_id=service, slot=slot, created_at=T0 + timedelta(minutes=minute)
    )


def test_to_remove_keeps_the_newest_per_slot_then_caps_the_total() -> None:
    entries = [
        entry("a", 1),
        entry("b", 3),
        entry("c", 2),
        entry("x", 0, slot="2"),
        entry("y", 0, service="t"),
    ]
    assert sorted(to_remove(entries, history=2, limit=100)) == ["a"]
    assert sorted(to_remove(entries, history=1, limit=100)) == ["a", "c"]
    # Beyond the total cap, the oldest of what is left go too (ties broken by id).
    assert sorted(to_remove(entries, history=5, limit=3)) == ["x", "y"]


def test_keep_moves_output_and_backups_and_last_line_reads_the_reason(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "output.log").write_bytes(b"starting\nport 30001 taken\n\n")
    logfiles.backup_path(task_dir, 1).write_bytes(b"older\n")
    (task_dir / "pid.json").write_text("{}")
    assert logfiles.last_line(task_dir) == "port 30001 taken"
    assert logfiles.last_line(tmp_path / "none") == ""

    kept = KeptLogs(tmp_path / "kept", history=1)
    kept.keep(task("t1", 1), task_dir)
    where = kept.directory("t1")
    assert where is not None
    assert sorted(p.name for p in where.iterdir()) == ["kept.json", "output.log", "output.log.1"]
    assert (task_dir / "pid.json").exists() and not (task_dir / "output.log").exists()
    assert kept.directory("../t1") is None and kept.directory("t2") is None

    # A newer task of the same slot pushes the older one out of a history of 1.
    (task_dir / "output.log").write_bytes(b"again\n")
    later = task("t2", 1, T0 + timedelta(days=1))
    kept.keep(later, task_dir)
    assert kept.directory("t1") is None and kept.directory("t2") is not None
    # Nothing to keep: nothing kept.
    kept.keep(task("t3", 2), task_dir)
    assert kept.directory("t3") is None
