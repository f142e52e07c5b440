"""The embedded SQLite backend: the default store, needing nothing beyond Python.

Layout: `objects(kind, id, data)` holds every live object; `events(seq, revision, type, data)` the
retained change history (whole transactions back to at least the engine's compaction point, pruned now
and then); `meta` the current revision. The
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
from treeherd.store.codec import SharedSpecs, decode, encode
from treeherd.store.engine import DEFAULT_HISTORY, EngineStore

_OBJECTS = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, id)
)
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
{_OBJECTS};
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, revision INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL
);
-- Pruning deletes the oldest revisions: without this index each prune scans the whole history.
CREATE INDEX IF NOT EXISTS events_revision ON events (revision);
"""
# Schema 2: `objects` is a rowid table. Schema 1 had it WITHOUT ROWID, which SQLite advises against for
# rows this large (a task is about 1 kB): every upsert moved whole rows around the primary key's
# B-tree, several times slower than a rowid table with the key in an index of its own.
SCHEMA_VERSION = 2
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
        if row is not None and row[0] == 1:
            _migrate_from_1(db)
        elif row is not None and row[0] != SCHEMA_VERSION:
            db.close()
            raise RuntimeError(
                f"{self._path} holds store schema {row[0]}, this treeherd reads schema {SCHEMA_VERSION}"
            )
        db.executescript(_SCHEMA)
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?), ('revision', 0)", (SCHEMA_VERSION,))
        self._db = db
        revision = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        specs = SharedSpecs()
        objects = [specs.share(decode(data)) for (data,) in db.execute("SELECT data FROM objects")]
        # Pruning removes whole revisions, so every transaction here is complete. The rows are read one
        # at a time: fetching them all at once held every event's bytes until the end, and the freed
        # memory stayed with the process (a third of its RSS after a load of 100,000 tasks).
        rows = db.execute("SELECT revision, type, data FROM events ORDER BY seq")
        # An event whose object is still current shares the live object instead of holding a copy.
        live = {(obj.kind, obj.id): obj for obj in objects}
        changes: list[Change] = []
        for rev, kind, data in rows:
            obj = decode(data)
            current = live.get((obj.kind, obj.id))
            obj = current if current is not None and current.version == obj.version else specs.share(obj)
            event = Event(revision=rev, type=kind, object=obj)
            if changes and changes[-1].revision == rev:
                changes[-1].events.append(event)
            else:
                changes.append(Change(revision=rev, events=[event]))
        return revision, objects, changes

    def _write(self, changes: list[Change], compacted_through: int) -> None:
        db = self._db
        assert db is not None, "load() must run before write()"
        # The last event of each object within the batch decides its row: an upsert writes an existing
        # row in place (a replace would delete it and insert it again under a new rowid, moving the
        # key's index entry too), a deletion removes it.
        final: dict[tuple[str, str], bytes | None] = {}
        events: list[tuple[int, str, bytes]] = []
        for change in changes:
            for event in change.events:
                obj = event.object
                data = encode(obj)
                final[obj.kind, obj.id] = None if event.type == "deleted" else data
                events.append((change.revision, event.type, data))
        deletes = [key for key, data in final.items() if data is None]
        rows = [(kind, id, data) for (kind, id), data in final.items() if data is not None]
        db.execute("BEGIN IMMEDIATE")
        try:
            _execute_rows(db, "DELETE FROM objects WHERE (kind, id) IN (VALUES ", deletes, ")")
            _execute_rows(
                db,
                "INSERT INTO objects (kind, id, data) VALUES ",
                rows,
                " ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data",
            )
            _execute_rows(db, "INSERT INTO events (revision, type, data) VALUES ", events)
            db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (changes[-1].revision,))
            self._since_prune += len(events)
            if self._since_prune >= _PRUNE_EVERY:
                self._since_prune = 0
                db.execute("DELETE FROM events WHERE revision <= ?", (compacted_through,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


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


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the same rows in a rowid `objects` table, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE objects RENAME TO objects_schema_1")
        db.execute(_OBJECTS)
        db.execute("INSERT INTO objects (kind, id, data) SELECT kind, id, data FROM objects_schema_1")
        db.execute("DROP TABLE objects_schema_1")
        db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore(EngineStore):
    """The embedded default store: an `EngineStore` persisted to `DATA_DIR/treeherd.db`."""

    def __init__(self, path: Path, *, history: int = DEFAULT_HISTORY, synchronous: str = "FULL") -> None:
        super().__init__(SqliteLog(path, synchronous=synchronous), history=history)
