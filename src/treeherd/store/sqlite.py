"""The embedded SQLite backend: the default store, needing nothing beyond Python.

Layout: `objects(kind, id, data, spec)` holds every live object; `events(seq, revision, type, data, spec)`
the retained change history (whole transactions back to at least the engine's compaction point, pruned
now and then); `task_specs(key, data)` each task spec once, by the hash of its bytes; `meta` the current
revision. A task's row and events hold the task without its spec and name the spec by its key, so a
status change does not write the spec again; a row with no spec key holds the whole object. The
database runs in WAL mode; each batch of transactions from the engine is one SQLite transaction, made
durable before any of it becomes visible. One dedicated thread owns the connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from treeherd.model.events import Change, Event
from treeherd.model.objects import AnyObject
from treeherd.model.services import Task
from treeherd.store.codec import (
    SharedSpecs,
    SpecKeys,
    decode,
    decode_spec,
    encode,
    encode_without_spec,
    with_spec,
)
from treeherd.store.engine import DEFAULT_HISTORY, EngineStore

_OBJECTS_2 = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, id)
)
"""
_TASK_SPECS = "CREATE TABLE IF NOT EXISTS task_specs (key BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, spec BLOB, PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, revision INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL, spec BLOB
);
-- Pruning deletes the oldest revisions: without this index each prune scans the whole history.
CREATE INDEX IF NOT EXISTS events_revision ON events (revision);
{_TASK_SPECS};
"""
# Schema 2: `objects` is a rowid table. Schema 1 had it WITHOUT ROWID, which SQLite advises against for
# rows this large (a task was about 1 kB): every upsert moved whole rows around the primary key's
# B-tree, several times slower than a rowid table with the key in an index of its own.
# Schema 3: task specs in a table of their own (a task's row is about 0.4 kB without it instead of
# 0.8 kB with the shortest command), named by the `spec` column of `objects` and `events`.
SCHEMA_VERSION = 3
R = TypeVar("R")
_PRUNE_EVERY = 1_000  # events written between two prunes of the history table
_ROWS_PER_STATEMENT = 5_000  # rows written by one statement (see `_execute_rows`)


class SqliteLog:
    """The durable log of an `EngineStore` in one SQLite file."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self._path = path
        self._synchronous = synchronous
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._since_prune = 0
        self._spec_keys = SpecKeys()
        self._stored_specs: set[bytes] = set()  # keys of the specs in the file

    async def _run(self, fn: Callable[..., R], *args: object) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def load(self) -> tuple[int, list[AnyObject], list[Change]]:
        return await self._run(self._load)

    async def write(self, changes: list[Change], compacted_through: int) -> None:
        await self._run(self._write, changes, compacted_through)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    # ---- in the database thread ----------------------------------------------------------------
    def _load(self) -> tuple[int, list[AnyObject], list[Change]]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
        )
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        schema = None if row is None else row[0]
        if schema not in (None, 1, 2, SCHEMA_VERSION):
            db.close()
            raise RuntimeError(
                f"{self._path} holds store schema {schema}, this treeherd reads schema {SCHEMA_VERSION}"
            )
        if schema == 1:
            _migrate(db, _from_1_to_2)
        if schema in (1, 2):
            _migrate(db, _from_2_to_3)
        db.executescript(_SCHEMA)
        if schema is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?), ('revision', 0)", (SCHEMA_VERSION,))
        self._db = db
        revision = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        task_specs = {key: decode_spec(data) for key, data in db.execute("SELECT key, data FROM task_specs")}
        used: set[bytes] = set()
        shared = SharedSpecs()

        def read(data: bytes, key: bytes | None) -> AnyObject:
            if key is None:
                return decode(data)
            spec = task_specs.get(key)
            if spec is None:
                raise RuntimeError(
                    f"{self._path} is damaged: a task names spec {key.hex()}, which it does not hold; "
                    "restore it from a backup (treeherd store restore)"
                )
            used.add(key)
            return with_spec(data, spec)

        objects = [
            shared.share(read(data, key)) for data, key in db.execute("SELECT data, spec FROM objects")
        ]
        # Pruning removes whole revisions, so every transaction here is complete. The rows are read one
        # at a time: fetching them all at once held every event's bytes until the end, and the freed
        # memory stayed with the process (a third of its RSS after a load of 100,000 tasks).
        rows = db.execute("SELECT revision, type, data, spec FROM events ORDER BY seq")
        # An event whose object is still current shares the live object instead of holding a copy.
        live = {(obj.kind, obj.id): obj for obj in objects}
        changes: list[Change] = []
        for rev, kind, data, key in rows:
            obj = read(data, key)
            current = live.get((obj.kind, obj.id))
            obj = current if current is not None and current.version == obj.version else shared.share(obj)
            event = Event(revision=rev, type=kind, object=obj)
            if changes and changes[-1].revision == rev:
                changes[-1].events.append(event)
            else:
                changes.append(Change(revision=rev, events=[event]))
        # Specs no row or event names any more (their tasks and history are gone) are dropped here,
        # where knowing which are named costs nothing.
        unused = [(key,) for key in task_specs.keys() - used]
        if unused:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM task_specs WHERE key = ?", unused)
            db.execute("COMMIT")
        self._stored_specs = used
        return revision, objects, changes

    def _write(self, changes: list[Change], compacted_through: int) -> None:
        db = self._db
        assert db is not None, "load() must run before write()"
        # The last event of each object within the batch decides its row: an upsert writes an existing
        # row in place (a replace would delete it and insert it again under a new rowid, moving the
        # key's index entry too), a deletion removes it.
        final: dict[tuple[str, str], tuple[bytes, bytes | None] | None] = {}
        events: list[tuple[int, str, bytes, bytes | None]] = []
        new_specs: dict[bytes, bytes] = {}
        for change in changes:
            for event in change.events:
                obj = event.object
                key: bytes | None = None
                if type(obj) is Task:
                    key, spec = self._spec_keys.key(obj)
                    if key not in self._stored_specs:
                        new_specs[key] = spec
                    data = encode_without_spec(obj)
                else:
                    data = encode(obj)
                final[obj.kind, obj.id] = None if event.type == "deleted" else (data, key)
                events.append((change.revision, event.type, data, key))
        deletes = [key for key, row in final.items() if row is None]
        rows = [(kind, id, *row) for (kind, id), row in final.items() if row is not None]
        db.execute("BEGIN IMMEDIATE")
        try:
            _execute_rows(db, "INSERT OR IGNORE INTO task_specs (key, data) VALUES ", list(new_specs.items()))
            _execute_rows(db, "DELETE FROM objects WHERE (kind, id) IN (VALUES ", deletes, ")")
            _execute_rows(
                db,
                "INSERT INTO objects (kind, id, data, spec) VALUES ",
                rows,
                " ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data, spec = excluded.spec",
            )
            _execute_rows(db, "INSERT INTO events (revision, type, data, spec) VALUES ", events)
            db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (changes[-1].revision,))
            self._since_prune += len(events)
            if self._since_prune >= _PRUNE_EVERY:
                self._since_prune = 0
                db.execute("DELETE FROM events WHERE revision <= ?", (compacted_through,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._stored_specs.update(new_specs)


def _execute_rows(
    db: sqlite3.Connection, head: str, rows: Sequence[tuple[object, ...]], tail: str = ""
) -> None:
    """Run `head (?, ...), (?, ...) tail` over `rows`, up to `_ROWS_PER_STATEMENT` rows a statement.

    `executemany` steps the statement once per row, and this thread takes the GIL back after each step:
    with the event loop busy, each take can wait for Python's switch interval (5 ms). Against a spinning
    main thread, 25,000 row updates and 25,000 event rows took 1.3-3.7 s that way (once 119 s), and
    0.85-1.1 s as statements of many rows, which step once each (0.55 s either way with the main thread
    idle). Every other commit waits while a batch is written."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(_ROWS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        values = ", ".join([one] * len(part))
        db.execute(f"{head}{values}{tail}", [value for row in part for value in row])


def _migrate(db: sqlite3.Connection, step: Callable[[sqlite3.Connection], None]) -> None:
    """Run one schema step in one transaction: all of it or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        step(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _from_1_to_2(db: sqlite3.Connection) -> None:
    """The same rows in a rowid `objects` table."""
    db.execute("ALTER TABLE objects RENAME TO objects_schema_1")
    db.execute(_OBJECTS_2)
    db.execute("INSERT INTO objects (kind, id, data) SELECT kind, id, data FROM objects_schema_1")
    db.execute("DROP TABLE objects_schema_1")
    db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")


def _from_2_to_3(db: sqlite3.Connection) -> None:
    """A `spec` column on `objects` and `events`, empty: the rows written before hold whole tasks, and
    each is written without its spec at its next change (a million tasks need no rewrite to open)."""
    db.execute("ALTER TABLE objects ADD COLUMN spec BLOB")
    db.execute("ALTER TABLE events ADD COLUMN spec BLOB")
    db.execute(_TASK_SPECS)
    db.execute("UPDATE meta SET value = 3 WHERE key = 'schema'")


class SqliteStore(EngineStore):
    """The embedded default store: an `EngineStore` persisted to `DATA_DIR/treeherd.db`."""

    def __init__(self, path: Path, *, history: int = DEFAULT_HISTORY, synchronous: str = "FULL") -> None:
        super().__init__(SqliteLog(path, synchronous=synchronous), history=history)
