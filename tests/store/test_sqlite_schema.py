"""The SQLite file's layout: tasks stored apart from their specs, older schemas migrated, others refused."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from sqlite_helpers import commit, rows
from store_helpers import MARK, SPEC, machine, node, replace, service, take, task, watching
from store_helpers import snapshot as snapshot_of_others

from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Service, Task, TaskSpec, TaskState, TaskStatus
from treeherd.store import sqlite as sqlite_backend
from treeherd.store.codec import decode, decode_spec, encode, encode_without_spec, with_spec
from treeherd.store.sqlite import SCHEMA_VERSION, SqliteStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def two_tasks() -> list[Create]:
    """Tasks t1 and t2 of service s1, with the tree node, machine and service they refer to."""
    return [
        Create(node("n1")),
        Create(machine("m1", "web-1")),
        Create(service()),
        Create(task("t1")),
        Create(task("t2")),
    ]


def with_status(current: Task, state: TaskState, message: str, *, seconds: int) -> Task:
    status = TaskStatus(timestamp=NOW + timedelta(seconds=seconds), state=state, message=message)
    return msgspec.structs.replace(current, status=status, machine_id="m1")


def snapshot(store: SqliteStore) -> tuple[int, dict[tuple[str, str], object]]:
    """The revision and every object, services and tasks included."""
    revision, objects = snapshot_of_others(store)
    for cls in (Service, Task):
        objects.update({(cls.kind, obj.id): obj for obj in store.view().all(cls)})
    return revision, objects


def history(store: SqliteStore) -> list[tuple[int, str, object]]:
    return [(c.revision, e.type, e.object) for c in store.history() for e in c.events]


def to_schema_2(path: Path) -> None:
    """Make the file what schema 2 wrote: whole objects in every row, no `spec` columns, no spec table."""
    with sqlite3.connect(path) as db:
        specs = {key: decode_spec(data) for key, data in db.execute("SELECT key, data FROM task_specs")}

        def whole(data: bytes, key: bytes | None) -> bytes:
            return data if key is None else encode(with_spec(data, specs[key]))

        for table, id_column in (("objects", "rowid"), ("events", "seq")):
            found = db.execute(f"SELECT {id_column}, data, spec FROM {table}").fetchall()
            for row_id, data, key in found:
                db.execute(f"UPDATE {table} SET data = ? WHERE {id_column} = ?", (whole(data, key), row_id))
            db.execute(f"ALTER TABLE {table} DROP COLUMN spec")
        db.execute("DROP TABLE task_specs")
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    db.close()


async def test_a_status_change_writes_the_task_without_its_spec_and_reads_back_the_same(open_sqlite, db_path):
    store = await open_sqlite()
    await commit(store, *two_tasks())
    assert rows(db_path, "SELECT count(*) FROM task_specs") == [(1,)]  # two tasks, one spec
    (spec_row,) = rows(db_path, "SELECT data FROM task_specs")
    # The status moves through the states an agent reports, one transaction each.
    for seconds, (state, message) in enumerate(
        [
            (TaskState.PREPARING, "preparing"),
            (TaskState.STARTING, "starting"),
            (TaskState.RUNNING, "started"),
        ],
        start=1,
    ):
        await commit(
            store, Update(with_status(store.view().get(Task, "t1"), state, message, seconds=seconds))
        )
    before, revision, events = snapshot(store), store.revision, history(store)
    assert before[1]["task", "t1"].status.state == TaskState.RUNNING
    await store.close()

    # The spec is in its table once, and no task row or event of a task holds it.
    assert rows(db_path, "SELECT data FROM task_specs") == [spec_row]
    assert MARK.encode() in spec_row[0]
    task_rows = rows(db_path, "SELECT data, spec FROM objects WHERE kind = 'task'")
    task_events = rows(db_path, "SELECT data, spec FROM events WHERE spec IS NOT NULL")
    assert len(task_rows) == 2 and len(task_events) == 5
    assert all(MARK.encode() not in data and key is not None for data, key in task_rows + task_events)
    # The service holds the same spec as a field of its own: it is stored whole.
    (service_row,) = rows(db_path, "SELECT data, spec FROM objects WHERE kind = 'service'")
    assert MARK.encode() in service_row[0] and service_row[1] is None

    reopened = await open_sqlite()
    assert snapshot(reopened) == before and reopened.revision == revision
    assert history(reopened) == events
    expected = with_status(task("t1"), TaskState.RUNNING, "started", seconds=3)
    assert reopened.view().get(Task, "t1") == msgspec.structs.replace(
        expected, version=before[1]["task", "t1"].version
    )


async def test_equal_specs_are_stored_once_and_unused_ones_are_dropped_at_open(
    open_sqlite, db_path, monkeypatch
):
    monkeypatch.setattr(sqlite_backend, "_PRUNE_EVERY", 1)  # the file keeps only the history needed
    other = TaskSpec(command=["sleep", "5"])
    store = await open_sqlite(history=2)
    await commit(
        store,
        Create(node("n1")),
        Create(machine("m1", "web-1")),
        Create(service()),
        Create(service("s2", other)),
    )
    # One spec for tasks a and b of s1 and c of s2 (equal specs, whoever holds them); another for d.
    same = msgspec.structs.replace(SPEC, env=dict(SPEC.env))  # equal, but not the same object
    await commit(store, Create(task("a")), Create(task("b", same)), Create(task("c", service_id="s2")))
    await commit(store, Create(task("d", other, service_id="s2")))
    assert rows(db_path, "SELECT count(*) FROM task_specs") == [(2,)]
    await commit(store, Delete(store.view().get(Task, "d")))
    await commit(store, Delete(store.view().get(Task, "c")))
    for n in range(3):  # history moves on, past the events that named `other`
        await commit(store, Update(replace(store.view().get(Task, "a"), placement_error=f"try {n}")))
    before = snapshot(store)
    await store.close()
    assert rows(db_path, "SELECT count(*) FROM task_specs") == [(2,)]  # kept until the next open

    reopened = await open_sqlite(history=2)
    assert snapshot(reopened) == before
    assert rows(db_path, "SELECT count(*) FROM task_specs") == [(1,)]
    (key,) = {key for (key,) in rows(db_path, "SELECT spec FROM objects WHERE kind = 'task'")}
    assert rows(db_path, "SELECT key FROM task_specs") == [(key,)]
    # a spec written again after it was dropped is stored again
    await commit(reopened, Create(task("e", other, service_id="s2")))
    assert rows(db_path, "SELECT count(*) FROM task_specs") == [(2,)]


async def test_a_schema_2_store_opens_and_its_tasks_lose_their_spec_at_their_next_change(
    open_sqlite, db_path
):
    store = await open_sqlite()
    await commit(store, *two_tasks())
    await commit(store, Update(with_status(store.view().get(Task, "t1"), TaskState.RUNNING, "up", seconds=1)))
    before, revision, events = snapshot(store), store.revision, history(store)
    await store.close()
    to_schema_2(db_path)
    assert all(
        MARK.encode() in data for (data,) in rows(db_path, "SELECT data FROM objects WHERE kind = 'task'")
    )

    reopened = await open_sqlite()
    assert snapshot(reopened) == before and reopened.revision == revision
    assert history(reopened) == events
    assert rows(db_path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
    # Rows written before keep the whole task until the task changes.
    assert rows(db_path, "SELECT id FROM objects WHERE kind = 'task' AND spec IS NULL ORDER BY id") == [
        ("t1",),
        ("t2",),
    ]
    await commit(
        reopened, Update(with_status(reopened.view().get(Task, "t2"), TaskState.RUNNING, "up", seconds=2))
    )
    after = snapshot(reopened)
    await reopened.close()
    assert rows(db_path, "SELECT id FROM objects WHERE kind = 'task' AND spec IS NULL") == [("t1",)]
    (t2_row,) = rows(db_path, "SELECT data FROM objects WHERE id = 't2'")
    assert MARK.encode() not in t2_row[0]

    again = await open_sqlite()
    assert snapshot(again) == after


async def test_a_task_naming_a_missing_spec_is_refused_with_what_to_do(db_path):
    store = SqliteStore(db_path)
    await store.open()
    await commit(
        store, Create(node("n1")), Create(machine("m1", "web-1")), Create(service()), Create(task("t1"))
    )
    await store.close()
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM task_specs")
    db.close()
    again = SqliteStore(db_path)
    try:
        with pytest.raises(RuntimeError, match=r"is damaged: a task names spec .* restore it from a backup"):
            await again.open()
    finally:
        await again.close()


async def test_other_schema_version_is_refused(db_path):
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    db = sqlite3.connect(db_path)
    db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    db.commit()
    db.close()
    again = SqliteStore(db_path)
    try:
        with pytest.raises(RuntimeError, match="schema 99"):
            await again.open()
    finally:
        await again.close()


async def test_a_schema_1_store_is_migrated_with_everything_in_it(db_path, open_sqlite):
    store = await open_sqlite()
    await commit(store, Create(machine("m1", "web-1")), Create(node("n1")))
    await commit(store, Update(replace(store.view().get(Machine, "m1"), hostname="web-one")))
    before, revision = snapshot(store), store.revision
    await store.close()
    # Make it what schema 1 wrote: schema 2's rows, in a WITHOUT ROWID table.
    to_schema_2(db_path)
    with sqlite3.connect(db_path) as db:
        db.execute("ALTER TABLE objects RENAME TO new_objects")
        db.execute(
            "CREATE TABLE objects (kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL,"
            " PRIMARY KEY (kind, id)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO objects SELECT kind, id, data FROM new_objects")
        db.execute("DROP TABLE new_objects")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
    db.close()

    reopened = await open_sqlite()
    assert snapshot(reopened) == before and reopened.revision == revision
    async with watching(reopened, since=1) as changes:  # the history survived too
        assert [c.revision for c in await take(changes, revision - 1)] == list(range(2, revision + 1))
    await commit(reopened, Create(machine("m2", "web-2")))
    await reopened.close()
    with sqlite3.connect(db_path) as db:
        table = db.execute("SELECT sql FROM sqlite_master WHERE name = 'objects'").fetchone()[0]
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        count = db.execute("SELECT count(*) FROM objects").fetchone()[0]
    db.close()
    assert "WITHOUT ROWID" not in table and schema == SCHEMA_VERSION and count == 3


def test_a_task_row_decodes_whole_only_with_its_spec():
    stored = task("t1")
    data = encode_without_spec(stored)
    assert len(data) < len(encode(stored)) and MARK.encode() not in data
    assert with_spec(data, SPEC) == stored
    assert decode(data).spec == TaskSpec(command=[])  # without it, an empty spec: never served
    with pytest.raises(ValueError, match="holds a machine, not a task"):
        with_spec(encode(machine("m1", "web-1")), SPEC)
