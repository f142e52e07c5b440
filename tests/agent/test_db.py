"""The agent's local DB: tasks and their last status survive a reopen; writes are one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from agent_helpers import NOW, make_task

from treeherd.agent.db import CACHE_PAGES, LAYOUT, PAGE_SIZE, PRUNE_SPECS_AT, AgentDBError, TaskDB
from treeherd.core.tasks.agent_state import StoredTask
from treeherd.model.services import TaskStatus
from treeherd.model.states import TaskState


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[TaskDB]:
    """The DB at `path`, open for the block (and closed after it, whatever happens)."""
    db = TaskDB(path)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


# The tables of this layout: tasks and statuses keyed by the agent's number for the task, and the
# tasks' specs, each once.
TABLES = {
    "tasks": (
        "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, spec BLOB NOT NULL,"
        " task BLOB NOT NULL)"
    ),
    "statuses": "CREATE TABLE statuses (seq INTEGER PRIMARY KEY, status BLOB NOT NULL)",
    "specs": "CREATE TABLE specs (key BLOB PRIMARY KEY, spec BLOB NOT NULL)",
}


def table_sql(raw: sqlite3.Connection) -> dict[str, str]:
    """Each table of the file and the statement that made it."""
    return dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())


def status(state: TaskState, **fields: object) -> TaskStatus:
    return TaskStatus(state=state, timestamp=NOW + timedelta(seconds=int(state)), **fields)  # type: ignore[arg-type]


async def test_tasks_and_statuses_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "agent.db"  # the directory is made on open
    t1, t2 = make_task("t1", env={"A": "1"}), make_task("t2")
    async with opened(path) as db:
        await db.write([(t1, status(TaskState.ACCEPTED)), (t2, status(TaskState.ASSIGNED))])
        await db.write([(t1, status(TaskState.FAILED, error="exit code 3", exit_code=3))])

    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.FAILED, error="exit code 3", exit_code=3)),
            StoredTask(task=t2, status=status(TaskState.ASSIGNED)),
        ]


async def test_deletes_and_puts_in_one_write(tmp_path: Path) -> None:
    async with opened(tmp_path / "agent.db") as db:
        await db.write([(make_task(i), status(TaskState.RUNNING)) for i in ("a", "b", "c")])
        await db.write([(make_task("d"), status(TaskState.ACCEPTED))], ["a", "c", "missing"])
        assert [stored.task.id for stored in await db.load()] == ["b", "d"]
        await db.write()  # nothing to do is fine


async def test_a_new_db_is_in_wal_mode_and_numbered_with_its_layout(tmp_path: Path) -> None:
    async with opened(tmp_path / "agent.db"):
        pass
    with closing(sqlite3.connect(tmp_path / "agent.db")) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LAYOUT == 5
        assert table_sql(raw) == TABLES


async def test_a_db_larger_than_its_cache_writes_and_loads_whole(tmp_path: Path) -> None:
    tasks = [make_task(f"t{i:04}", env={"N": str(i)}) for i in range(1000)]  # a page or two each
    async with opened(tmp_path / "agent.db") as db:
        cache = await db._call(lambda: db._connection().execute("PRAGMA cache_size").fetchone()[0])
        assert cache == CACHE_PAGES  # SQLite's default would keep about 2 MB per agent
        await db.write([(task, task.status) for task in tasks])  # one transaction of ~1,000 pages
        await db.write([(task, status(TaskState.RUNNING)) for task in tasks[::2]])
    async with opened(tmp_path / "agent.db") as db:
        loaded = await db.load()
    assert [stored.task for stored in loaded] == tasks
    assert [stored.status.state for stored in loaded] == [TaskState.RUNNING, TaskState.ASSIGNED] * 500


async def test_a_closed_db_says_so(tmp_path: Path) -> None:
    db = TaskDB(tmp_path / "agent.db")
    with pytest.raises(RuntimeError, match="not open"):
        await db.load()
    await db.close()  # closing a DB never opened is harmless


async def test_a_new_status_alone_and_a_changed_task_both_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    first, changed = make_task("t1"), make_task("t1", env={"B": "2"})
    async with opened(path) as db:
        await db.write([(first, status(TaskState.ACCEPTED))])
        await db.write([(first, status(TaskState.PREPARING))])  # its status row alone
        await db.write([(make_task("t2"), status(TaskState.ASSIGNED))], ["t2"])
        await db.write([(changed, status(TaskState.READY)), (make_task("t3"), status(TaskState.NEW))])
        await db.write(
            [(make_task("t3"), status(TaskState.ASSIGNED)), (make_task("t3"), status(TaskState.ACCEPTED))]
        )

    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=changed, status=status(TaskState.READY)),
            StoredTask(task=make_task("t3"), status=status(TaskState.ACCEPTED)),
        ]
        await db.write([(changed, status(TaskState.STARTING))])  # known from the load: status only
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM tasks").fetchone()[0] == 2


async def test_a_status_change_writes_one_small_page(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    async with opened(path) as db:
        tasks = [make_task(f"t{i:03}", env={"PAYLOAD": "x" * 500}) for i in range(100)]
        await db.write([(task, status(TaskState.ACCEPTED)) for task in tasks])
        wal = path.with_name(path.name + "-wal")
        before = wal.stat().st_size
        await db.write([(tasks[50], status(TaskState.PREPARING))])
        # One frame (a page and its 24-byte header) for the status's page; a row of task and status
        # together would take a page of at least the task's size.
        assert 0 < wal.stat().st_size - before <= PAGE_SIZE + 24
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE


async def test_a_task_with_the_status_it_came_with_is_one_row(tmp_path: Path) -> None:
    """A new task's status is the manager's (its own field): no row of `statuses` until the agent's
    first status of its own; both read back as written."""
    path = tmp_path / "agent.db"
    async with opened(path) as db:
        t1, t2 = make_task("t1"), make_task("t2")
        await db.write([(t1, t1.status), (t2, t2.status)])
        with closing(sqlite3.connect(path)) as raw:
            assert raw.execute("SELECT count(*) FROM statuses").fetchone()[0] == 0
        # An equal status that is not the task's own object is the agent's: it gets its row.
        await db.write([(t2, msgspec.structs.replace(t2.status)), (t1, status(TaskState.RUNNING))])
        with closing(sqlite3.connect(path)) as raw:
            statuses = raw.execute("SELECT id FROM statuses JOIN tasks USING (seq)").fetchall()
            assert sorted(statuses) == [("t1",), ("t2",)]
        t3 = make_task("t3")
        await db.write([(t3, t3.status)])
    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.RUNNING)),
            StoredTask(task=t2, status=t2.status),
            StoredTask(task=t3, status=t3.status),
        ]


async def test_a_db_of_one_table_is_converted_when_opened(tmp_path: Path) -> None:
    """An agent's DB as an earlier version wrote it (task and status in one row): its tasks and
    statuses load as they were, and writes go on."""
    path = tmp_path / "agent.db"
    t1, t2 = make_task("t1", env={"A": "1"}), make_task("t2")
    encode = msgspec.msgpack.encode
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, task BLOB NOT NULL, status BLOB NOT NULL) WITHOUT ROWID"
        )
        raw.executemany(
            "INSERT INTO tasks VALUES (?, ?, ?)",
            [
                ("t1", encode(t1), encode(status(TaskState.RUNNING))),
                ("t2", encode(t2), encode(status(TaskState.FAILED, error="exit code 3", exit_code=3))),
            ],
        )
    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.RUNNING)),
            StoredTask(task=t2, status=status(TaskState.FAILED, error="exit code 3", exit_code=3)),
        ]
        await db.write([(t1, status(TaskState.SHUTDOWN))], ["t2"])
    async with opened(path) as db:  # opened again: nothing left to convert
        assert await db.load() == [StoredTask(task=t1, status=status(TaskState.SHUTDOWN))]
    with closing(sqlite3.connect(path)) as raw:
        assert table_sql(raw) == TABLES
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LAYOUT


# The tables of earlier layouts that kept tasks and statuses apart: 2 and 3 by id (2 with `tasks`
# WITHOUT ROWID, where a task's row spilled to an overflow page of its own), 4 by the agent's number for
# the task, each task with its spec.
OLD_TABLES = {
    2: [
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, task BLOB NOT NULL) WITHOUT ROWID",
        "CREATE TABLE statuses (id TEXT PRIMARY KEY, status BLOB NOT NULL) WITHOUT ROWID",
    ],
    3: [
        "CREATE TABLE tasks (id TEXT PRIMARY KEY, task BLOB NOT NULL)",
        "CREATE TABLE statuses (id TEXT PRIMARY KEY, status BLOB NOT NULL) WITHOUT ROWID",
    ],
    4: [
        "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task BLOB NOT NULL)",
        "CREATE TABLE statuses (seq INTEGER PRIMARY KEY, status BLOB NOT NULL)",
    ],
}


@pytest.mark.parametrize("layout", sorted(OLD_TABLES))
async def test_a_db_of_layout_2_3_or_4_is_converted_when_opened(tmp_path: Path, layout: int) -> None:
    """Its tasks and statuses load as they were, from this layout's tables (each spec kept once), and
    writes go on."""
    path = tmp_path / "agent.db"
    t1, t2, t3 = make_task("t1", env={"A": "1"}), make_task("t2"), make_task("t3")
    encode = msgspec.msgpack.encode
    running = encode(status(TaskState.RUNNING))
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute(f"PRAGMA page_size={PAGE_SIZE}")
        raw.execute("PRAGMA journal_mode=WAL")
        for table in OLD_TABLES[layout]:
            raw.execute(table)
        if layout == 4:  # numbered in the order they came, not by id
            raw.executemany("INSERT INTO tasks VALUES (?, ?, ?)", [(3, "t3", encode(t3)), (1, "t1", encode(t1)),
                                                                  (2, "t2", encode(t2))])  # fmt: skip
            raw.execute("INSERT INTO statuses VALUES (?, ?)", (1, running))
        else:
            raw.executemany("INSERT INTO tasks VALUES (?, ?)", [(t.id, encode(t)) for t in (t3, t1, t2)])
            raw.execute("INSERT INTO statuses VALUES (?, ?)", ("t1", running))
        raw.execute(f"PRAGMA user_version={layout}")
    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.RUNNING)),
            StoredTask(task=t2, status=t2.status),
            StoredTask(task=t3, status=t3.status),
        ]
        await db.write([(t2, status(TaskState.ACCEPTED)), (make_task("t4"), status(TaskState.NEW))], ["t3"])
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
        assert table_sql(raw) == TABLES  # the copies' sources are gone
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT count(*) FROM specs").fetchone()[0] == 2  # t1's, and the others'
        if layout == 4:
            assert raw.execute("SELECT seq FROM tasks WHERE id = 't2'").fetchone()[0] == 2  # kept
    async with opened(path) as db:  # opened again: nothing left to convert
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.RUNNING)),
            StoredTask(task=t2, status=status(TaskState.ACCEPTED)),
            StoredTask(task=make_task("t4"), status=status(TaskState.NEW)),
        ]


async def test_a_db_of_a_newer_layout_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """An agent rolled back after an upgrade must not misread what the newer one wrote."""
    path = tmp_path / "agent.db"
    async with opened(path) as db:
        await db.write([(make_task("t1"), status(TaskState.RUNNING))])
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute(f"PRAGMA user_version={LAYOUT + 1}")
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    db = TaskDB(path)
    with pytest.raises(
        AgentDBError, match=rf"^the agent DB {path} has layout {LAYOUT + 1}, written by a newer"
    ):
        await db.open()
    await db.close()
    assert path.read_bytes() == before
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == LAYOUT + 1


async def test_a_task_removed_and_assigned_again_has_no_status_of_its_earlier_life(tmp_path: Path) -> None:
    """A task's status goes with it: the same id assigned again (in the same write as its removal, or
    after it, in this life of the DB or the next) starts from its own status."""
    path = tmp_path / "agent.db"
    t1, t2 = make_task("t1"), make_task("t2")
    async with opened(path) as db:
        await db.write([(t1, status(TaskState.RUNNING)), (t2, status(TaskState.RUNNING))])
        await db.write(deletes=["t1"])
        await db.write([(t1, t1.status)])
        await db.write([(t2, status(TaskState.FAILED))], ["t2"])  # the put, then the delete
        assert await db.load() == [StoredTask(task=t1, status=t1.status)]
    async with opened(path) as db:
        await db.write([(t1, status(TaskState.RUNNING))])
        await db.write(deletes=["t1"])
    async with opened(path) as db:
        await db.write([(t1, t1.status), (t2, t2.status)])
    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=t1.status),
            StoredTask(task=t2, status=t2.status),
        ]
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM statuses").fetchone()[0] == 0


async def test_the_statuses_of_one_message_change_few_pages(tmp_path: Path) -> None:
    """The tasks of one write are numbered in a row, so their statuses sit together: a status for each
    of 20 tasks among 200 writes a few frames (their pages and the path to them), where keyed by
    random ids they wrote a frame for about every two tasks."""
    path = tmp_path / "agent.db"
    ids = [f"{n * 7919 % 10007:05}" for n in range(200)]  # out of order, as random ids are
    tasks = [make_task(task_id) for task_id in ids]
    async with opened(path) as db:
        for start in range(0, 200, 20):  # as an agent takes messages: the tasks, then their statuses
            await db.write([(task, task.status) for task in tasks[start : start + 20]])
            await db.write([(task, status(TaskState.RUNNING)) for task in tasks[start : start + 20]])
        wal = path.with_name(path.name + "-wal")
        before = wal.stat().st_size
        await db.write([(task, status(TaskState.SHUTDOWN)) for task in tasks[100:120]])
        frames = (wal.stat().st_size - before) / (PAGE_SIZE + 24)
    assert 1 <= frames <= 5


async def test_the_tasks_of_one_spec_keep_it_once(tmp_path: Path) -> None:
    """A task's row holds the task without its spec; the spec is kept once for all the tasks that run
    it, whether they share the object or carry equal copies, and each loads with it."""
    path = tmp_path / "agent.db"
    shared = make_task("t000", env={"PAYLOAD": "x" * 500})
    tasks = [msgspec.structs.replace(shared, id=f"t{i:03}") for i in range(100)]  # one spec object
    tasks += [make_task(f"u{i:03}", env={"PAYLOAD": "x" * 500}) for i in range(100)]  # equal copies
    async with opened(path) as db:
        await db.write([(task, task.status) for task in tasks[:150]])
        await db.write([(task, task.status) for task in tasks[150:]])
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("SELECT count(*) FROM specs").fetchone()[0] == 1
        assert raw.execute("SELECT max(length(task)) FROM tasks").fetchone()[0] < 400
    async with opened(path) as db:
        assert [stored.task for stored in await db.load()] == tasks


async def test_specs_no_task_refers_to_are_deleted(tmp_path: Path) -> None:
    """While the DB is open, once the specs it keeps reach `PRUNE_SPECS_AT` (or twice as many as after
    the last clean-up); and whenever it opens."""
    path = tmp_path / "agent.db"

    def spec_count() -> int:
        with closing(sqlite3.connect(path)) as raw:
            return int(raw.execute("SELECT count(*) FROM specs").fetchone()[0])

    first = [make_task(f"a{i:02}", env={"N": str(i)}) for i in range(PRUNE_SPECS_AT - 12)]
    second = [make_task(f"b{i:02}", env={"M": str(i)}) for i in range(12)]
    async with opened(path) as db:
        await db.write([(task, task.status) for task in first])
        await db.write(deletes=[task.id for task in first])
        assert spec_count() == len(first)  # below the mark: kept for now
        await db.write([(task, task.status) for task in second])  # reaches the mark
        assert spec_count() == len(second)
        await db.write(deletes=[task.id for task in second[1:]])
        assert spec_count() == len(second)
    async with opened(path) as db:
        assert spec_count() == 1
        assert [stored.task for stored in await db.load()] == second[:1]
        await db.write([(task, task.status) for task in first[:2]])  # their specs are put again
    async with opened(path) as db:
        assert [stored.task for stored in await db.load()] == [*first[:2], second[0]]


@pytest.mark.parametrize("committed", [False, True])
async def test_a_failed_write_leaves_no_task_without_its_spec(tmp_path: Path, committed: bool) -> None:
    """A write that fails, before its transaction or after it committed: the next writes of the same
    spec's tasks make sure the spec is in the file, and every task loads."""
    path = tmp_path / "agent.db"
    t1 = make_task("t1", env={"A": "1"})
    t2 = msgspec.structs.replace(t1, id="t2")  # the same spec object
    async with opened(path) as db:
        real_write = db._write

        def failing(*args: Any) -> list[bytes]:
            if committed:
                real_write(*args)
            raise sqlite3.OperationalError("disk I/O error")

        db._write = failing  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            await db.write([(t1, t1.status)])
        del db._write
        await db.write([(t1, status(TaskState.RUNNING)), (t2, t2.status)])
    async with opened(path) as db:
        assert await db.load() == [
            StoredTask(task=t1, status=status(TaskState.RUNNING)),
            StoredTask(task=t2, status=t2.status),
        ]
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
