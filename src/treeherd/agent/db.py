"""The agent's local DB: the tasks assigned to this machine and the last status the agent saw.

One SQLite file in WAL mode, three tables: `tasks(seq, id, spec, task)`, `statuses(seq, status)` and
`specs(key, spec)`, as msgpack. `seq` is a number the agent gives each task in the order they come;
`spec` is the key of the task's spec in `specs` (a hash of its bytes, as the store keys the specs it
keeps apart: `store.codec`), where each spec is kept once, however many tasks run it, and a task's row
holds the rest of the task (about 0.3 kB of a hollow task's 0.7).
It is what lets a restarted agent resume its tasks before the manager is reachable again. Most
writes are a new status of a task already stored as it is: those write only its row of `statuses`.
Every page a transaction changes is a frame of the WAL: with the status apart, in pages of 1 kB, a
status change writes a frame of about 1 kB, where the task and its status in one row (the task about
ten times the size of its status) made it one of 4 kB. That is the WAL appends and the page cache
they fill, which at 5,000 agents on one machine were a large part of the agents' cost (the schedule
benchmark's README has the figures); a new task, without its spec, takes about a third of a page
where with it it took most of one. A task whose status is still the one it came with from the
manager (its own `status` field, ASSIGNED as a rule) has no row in `statuses`: a new task is one
row, and its first status of the agent's own is written when it comes.
Both tables of tasks are keyed by the task's number, so the tasks of one message, and later their
statuses, sit side by side: the statuses of 20 tasks among 200 change 4 pages, where keyed by the
tasks' random ids they changed 14. A spec no task refers to any more is deleted when the DB opens,
and while it is open once the specs kept have doubled since the last such clean-up.
A DB of an earlier version is converted when opened. The layout is numbered in SQLite's
`user_version` (`LAYOUT`): a DB of a newer layout than this agent knows is refused with
`AgentDBError`, rather than misread (an agent rolled back after an upgrade).
All SQLite calls run on one dedicated thread (a connection belongs to the thread that made it), so
the event loop never blocks on the disk; a batch of writes is one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgspec

from treeherd.core.tasks.agent_state import StoredTask
from treeherd.model.services import Task, TaskStatus
from treeherd.store.codec import SpecKeys, decode_spec, encode_spec, encode_without_spec, spec_key, with_spec

__all__ = ["LAYOUT", "AgentDBError", "TaskDB"]

T = TypeVar("T")

_TASKS = (
    "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, spec BLOB NOT NULL,"
    " task BLOB NOT NULL)"
)
_STATUSES = "CREATE TABLE statuses (seq INTEGER PRIMARY KEY, status BLOB NOT NULL)"
_SPECS = "CREATE TABLE specs (key BLOB PRIMARY KEY, spec BLOB NOT NULL)"
# Layout 4's table of tasks, each with its spec (what `_convert` makes of layouts 1 to 3).
_TASKS_4 = "CREATE TABLE tasks (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task BLOB NOT NULL)"
_UNUSED_SPECS = "DELETE FROM specs WHERE key NOT IN (SELECT spec FROM tasks) RETURNING key"
# The page size of a new file (an existing one keeps its own): each page a write changes is a frame
# of the WAL, so small pages make a status change cheap; a task's row fits on one (a larger one spills
# to overflow pages).
PAGE_SIZE = 1024
# Pages this connection keeps in memory (SQLite's default is 2 MB). The agent reads the file once, when it
# starts; after that it only writes, and a write needs the pages of the rows it changes and the path to
# them. A cache the size of the file held about 1.5 kB per task at 200 tasks, for nothing.
CACHE_PAGES = 64
# The layout this agent writes, in the file's `user_version`: 1, task and status in one row (never
# numbered: 0 in the file); 2, tasks and statuses apart, by id; 3, `tasks` a rowid table; 4, both
# keyed by the agent's number for the task; 5, the specs apart, each once.
LAYOUT = 5
# Unused specs are deleted once there are this many specs, or twice as many as after the last time.
PRUNE_SPECS_AT = 32


def _prune_mark(specs_held: int) -> int:
    """How many specs held start the next clean-up, after one (or the open) left `specs_held`."""
    return max(PRUNE_SPECS_AT, 2 * specs_held)


class AgentDBError(Exception):
    """The agent DB cannot be used as it is; the message says why and what to do."""


class TaskDB:
    """`open()`, then `load()` / `write()`, then `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._task_decoder = msgspec.msgpack.Decoder(Task)  # a task of layout 4, with its spec
        self._status_decoder = msgspec.msgpack.Decoder(TaskStatus)
        self._stored: dict[str, Task] = {}  # each task as its row holds it
        # Each task's number in the file (read when it opens), and the next one to give. A number given
        # to a task whose write failed is kept for it: the next write of it uses the same.
        self._seqs: dict[str, int] = {}
        self._next_seq = 1
        # The keys of the specs in the file (as far as this DB knows: a spec is put again, ignored if
        # there, when unsure), and each task's spec key found again by its service and spec version.
        self._spec_keys = SpecKeys()
        self._specs_held: set[bytes] = set()
        self._prune_at = PRUNE_SPECS_AT

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treeherd-agent-db")
        try:
            await self._call(self._open)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._call(self._close)
        self._thread.shutdown(wait=True)
        self._thread = None

    async def load(self) -> list[StoredTask]:
        """Every task in the DB, in id order."""
        loaded = await self._call(self._load)
        self._stored = {stored.task.id: stored.task for stored in loaded}
        return loaded

    async def write(self, puts: Sequence[tuple[Task, TaskStatus]] = (), deletes: Sequence[str] = ()) -> None:
        """Upsert and delete in one transaction (puts first, so a put+delete of one id deletes it)."""
        if not puts and not deletes:
            return
        rows: list[tuple[int, str, bytes, bytes]] = []
        statuses: list[tuple[int, bytes]] = []
        new_specs: dict[bytes, bytes] = {}
        seqs = self._seqs
        encode = self._encoder.encode
        latest = {task.id: (task, status) for task, status in puts}  # the last put of an id wins
        for task, status in latest.values():
            seq = seqs.get(task.id)
            if seq is None:
                seq = seqs[task.id] = self._next_seq
                self._next_seq += 1
            stored = self._stored.get(task.id)
            if not (stored is task or stored == task):
                key, spec = self._spec_keys.key(task)
                if key not in self._specs_held:
                    new_specs[key] = spec
                rows.append((seq, task.id, key, encode_without_spec(task)))
            # The status the task came with is in its row. The same object, not an equal one: a task
            # whose status changed and came back to an equal value keeps the row it has.
            if status is not task.status:
                statuses.append((seq, encode(status)))
        removed = [(seqs[task_id],) for task_id in deletes if task_id in seqs]
        specs = list(new_specs.items())
        prune = len(self._specs_held) + len(new_specs) >= self._prune_at
        try:
            pruned = await self._call(lambda: self._write(rows, statuses, removed, specs, prune))
        except BaseException:
            # Unsure what the rows hold now: the next writes rewrite them whole, with their specs.
            self._stored.clear()
            self._specs_held.clear()
            raise
        for task, _ in latest.values():
            self._stored[task.id] = task
        for task_id in deletes:
            self._stored.pop(task_id, None)
            seqs.pop(task_id, None)
        self._specs_held.update(new_specs)
        if prune:
            self._specs_held.difference_update(pruned)
            self._prune_at = _prune_mark(len(self._specs_held))

    async def _call(self, function: Callable[[], T]) -> T:
        if self._thread is None:
            raise RuntimeError("the agent DB is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    # --- on the DB thread -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            # Before anything that could write to the file (WAL mode changes its header).
            layout = db.execute("PRAGMA user_version").fetchone()[0]
            if layout > LAYOUT:
                raise AgentDBError(
                    f"the agent DB {self.path} has layout {layout}, written by a newer treeherd agent;"
                    f" this one reads layouts up to {LAYOUT}: run the newer agent, or move the file away"
                    " (this agent then stops the tasks it finds running and starts those the manager"
                    " assigns)"
                )
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before the first table: a new file only
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; a power loss may lose the last writes,
            # which the manager's copy and the next reports make good.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size={CACHE_PAGES}")
            db.execute("BEGIN IMMEDIATE")
            try:
                columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
                if not columns:  # a new file
                    db.execute(_TASKS)
                    db.execute(_STATUSES)
                    db.execute(_SPECS)
                elif "spec" not in columns:
                    if "seq" not in columns:
                        _convert(db, columns)
                    self._split_specs(db)
                if layout != LAYOUT:
                    db.execute(f"PRAGMA user_version={LAYOUT}")
                seqs = dict(db.execute("SELECT id, seq FROM tasks"))
                db.execute(_UNUSED_SPECS).fetchall()
                held = {bytes(key) for (key,) in db.execute("SELECT key FROM specs")}
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        self._seqs = seqs
        self._next_seq = max(seqs.values(), default=0) + 1
        self._specs_held = held
        self._prune_at = _prune_mark(len(held))

    def _split_specs(self, db: sqlite3.Connection) -> None:
        """Layout 4's tasks (each row with its spec) as this layout's: each spec once, in `specs`."""
        db.execute(_SPECS)
        db.execute("ALTER TABLE tasks RENAME TO tasks_before")
        db.execute(_TASKS)
        specs: dict[bytes, bytes] = {}
        rows = []
        for seq, task_id, data in db.execute("SELECT seq, id, task FROM tasks_before"):
            try:
                task = self._task_decoder.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise AgentDBError(
                    f"the agent DB {self.path} holds task {task_id} in a form this agent cannot read"
                    f" ({error}); move the file away (this agent then stops the tasks it finds running"
                    " and starts those the manager assigns)"
                ) from None
            spec = encode_spec(task.spec)
            key = spec_key(spec)
            specs[key] = spec
            rows.append((seq, task_id, key, encode_without_spec(task)))
        db.executemany("INSERT INTO specs (key, spec) VALUES (?, ?)", specs.items())
        db.executemany("INSERT INTO tasks (seq, id, spec, task) VALUES (?, ?, ?, ?)", rows)
        db.execute("DROP TABLE tasks_before")

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the agent DB is not open")
        return self._db

    def _load(self) -> list[StoredTask]:
        db = self._connection()
        specs = {bytes(key): decode_spec(data) for key, data in db.execute("SELECT key, spec FROM specs")}
        rows = db.execute(
            "SELECT id, spec, task, status FROM tasks LEFT JOIN statuses USING (seq) ORDER BY id"
        ).fetchall()
        loaded = []
        for task_id, key, data, status in rows:
            spec = specs.get(bytes(key))
            if spec is None:
                raise AgentDBError(
                    f"the agent DB {self.path} lacks the spec of task {task_id}; move the file away"
                    " (this agent then stops the tasks it finds running and starts those the manager"
                    " assigns)"
                )
            task = with_spec(data, spec)
            own = task.status if status is None else self._status_decoder.decode(status)
            loaded.append(StoredTask(task=task, status=own))
        return loaded

    def _write(
        self,
        rows: list[tuple[int, str, bytes, bytes]],
        statuses: list[tuple[int, bytes]],
        deletes: list[tuple[int]],
        specs: list[tuple[bytes, bytes]],
        prune: bool,
    ) -> list[bytes]:
        """The writes in one transaction; with `prune`, the specs no task refers to are deleted too
        (their keys returned)."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            # Only the statements with rows: most writes are statuses only, or new tasks only.
            if specs:
                db.executemany("INSERT OR IGNORE INTO specs (key, spec) VALUES (?, ?)", specs)
            if rows:
                db.executemany(
                    "INSERT INTO tasks (seq, id, spec, task) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (seq) DO UPDATE SET spec = excluded.spec, task = excluded.task",
                    rows,
                )
            if statuses:
                db.executemany(
                    "INSERT INTO statuses (seq, status) VALUES (?, ?)"
                    " ON CONFLICT (seq) DO UPDATE SET status = excluded.status",
                    statuses,
                )
            if deletes:
                db.executemany("DELETE FROM tasks WHERE seq = ?", deletes)
                db.executemany("DELETE FROM statuses WHERE seq = ?", deletes)
            pruned = [bytes(key) for (key,) in db.execute(_UNUSED_SPECS)] if prune else []
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return pruned


def _convert(db: sqlite3.Connection, columns: set[str]) -> None:
    """The tables of an earlier layout (`columns`: those of its `tasks`) as layout 4's, numbered in
    id order. Layout 1 kept each task's status in its row; layouts 2 and 3 in `statuses`, by id."""
    in_rows = "status" in columns  # layout 1
    db.execute("ALTER TABLE tasks RENAME TO tasks_before")
    if not in_rows:
        db.execute("ALTER TABLE statuses RENAME TO statuses_before")
    db.execute(_TASKS_4)
    db.execute(_STATUSES)
    db.execute("INSERT INTO tasks (id, task) SELECT id, task FROM tasks_before ORDER BY id")
    source = "tasks_before" if in_rows else "statuses_before"
    db.execute(
        f"INSERT INTO statuses (seq, status) SELECT tasks.seq, old.status FROM {source} AS old"
        " JOIN tasks USING (id)"
    )
    db.execute("DROP TABLE tasks_before")
    if not in_rows:
        db.execute("DROP TABLE statuses_before")
