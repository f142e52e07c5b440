"""The agent's local DB: tasks and their last status survive a reopen; writes are one transaction."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from agent_helpers import NOW, make_task

from treeherd.agent.db import TaskDB
from treeherd.core.tasks.agent_state import StoredTask
from treeherd.model.services import TaskStatus
from treeherd.model.states import TaskState


def status(state: TaskState, **fields: object) -> TaskStatus:
    return TaskStatus(state=state, timestamp=NOW + timedelta(seconds=int(state)), **fields)  # type: ignore[arg-type]


async def test_tasks_and_statuses_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "agent.db"  # the directory is made on open
    db = TaskDB(path)
    await db.open()
    t1, t2 = make_task("t1", env={"A": "1"}), make_task("t2")
    await db.write([(t1, status(TaskState.ACCEPTED)), (t2, status(TaskState.ASSIGNED))])
    await db.write([(t1, status(TaskState.FAILED, error="exit code 3", exit_code=3))])
    await db.close()

    db = TaskDB(path)
    await db.open()
    try:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.FAILED, error="exit code 3", exit_code=3)),
            StoredTask(task=t2, status=status(TaskState.ASSIGNED)),
        ]
    finally:
        await db.close()


async def test_deletes_and_puts_in_one_write(tmp_path: Path) -> None:
    db = TaskDB(tmp_path / "agent.db")
    await db.open()
    try:
        await db.write([(make_task(i), status(TaskState.RUNNING)) for i in ("a", "b", "c")])
        await db.write([(make_task("d"), status(TaskState.ACCEPTED))], ["a", "c", "missing"])
        assert [stored.task.id for stored in await db.load()] == ["b", "d"]
        await db.write()  # nothing to do is fine
    finally:
        await db.close()


async def test_the_db_is_in_wal_mode(tmp_path: Path) -> None:
    db = TaskDB(tmp_path / "agent.db")
    await db.open()
    await db.close()
    with closing(sqlite3.connect(tmp_path / "agent.db")) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_closed_db_says_so(tmp_path: Path) -> None:
    db = TaskDB(tmp_path / "agent.db")
    with pytest.raises(RuntimeError, match="not open"):
        await db.load()
    await db.close()  # closing a DB never opened is harmless


async def test_a_new_status_alone_and_a_changed_task_both_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    db = TaskDB(path)
    await db.open()
    first, changed = make_task("t1"), make_task("t1", env={"B": "2"})
    await db.write([(first, status(TaskState.ACCEPTED))])
    await db.write([(first, status(TaskState.PREPARING))])  # the status column alone
    await db.write([(make_task("t2"), status(TaskState.ASSIGNED))], ["t2"])
    await db.write([(changed, status(TaskState.READY)), (make_task("t3"), status(TaskState.NEW))])
    await db.write(
        [(make_task("t3"), status(TaskState.ASSIGNED)), (make_task("t3"), status(TaskState.ACCEPTED))]
    )
    await db.close()

    db = TaskDB(path)
    await db.open()
    try:
        assert await db.load() == [
            StoredTask(task=changed, status=status(TaskState.READY)),
            StoredTask(task=make_task("t3"), status=status(TaskState.ACCEPTED)),
        ]
        await db.write([(changed, status(TaskState.STARTING))])  # known from the load: status only
    finally:
        await db.close()
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2
