"""The etcd store: a cluster's objects as keys in etcd, served from an in-memory working set fed by etcd's watch.

`open()` connects to the first endpoint that answers, takes or checks the prefix's marker (see
`etcd_layout`), reads every key at one revision into the `State`, and starts the feed: one etcd watch
from the next revision, which is the only way objects enter the working set, in this manager as in any
other reading the same prefix. The store revision is etcd's revision; an object's version is its key's
`mod_revision`.

A commit is checked in memory exactly as `EngineStore` checks it (unique keys, references, invariants,
versions), then written as an etcd transaction that compares each key with the version the caller based
it on and the head key with the last revision this store wrote or saw (`etcd_writer`; with `fence()`, a
leader key's create revision too); the commit returns once the feed has applied its revision, so a
caller reads its own writes. Queued commits are taken `SLICE` at a time: each one an etcd transaction
(its own revision), sent in order, answered together once the feed caught up. When another writer moved
the head, the rest is checked again on the new state. Commits larger than one etcd transaction are split
(`etcd_layout.plan_chunks` says what atomicity that keeps).

Each task is stored without its spec, each spec once (`etcd_specs`): the load, the feed and the history
put the spec back, so every task read is the task written. Before its first write, and now and then,
the store upgrades a prefix of an older schema and deletes unused specs (`etcd_prefix.upkeep`).

Watches and history come from the engine: the changes read back from etcd at `open()` (`etcd_history`)
and those seen since, up to `history` events, are resumable; an older revision answers `Compacted`, as
does one etcd itself has compacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

import msgspec
from aetcd import rpc

from treeherd.model.errors import Refused, TreeherdError, Unavailable
from treeherd.model.events import Change, Event
from treeherd.model.objects import AnyObject
from treeherd.model.services import Task
from treeherd.store.base import Committed
from treeherd.store.codec import SharedSpecs
from treeherd.store.engine import DEFAULT_HISTORY, EngineStore, _EngineWatch, _Pending, _settle
from treeherd.store.etcd_client import EtcdClient, EtcdUrl, parse_etcd_url
from treeherd.store.etcd_history import read_history
from treeherd.store.etcd_layout import PARTIAL, Layout, read_marker
from treeherd.store.etcd_prefix import take, upkeep
from treeherd.store.etcd_specs import Specs, decode_value
from treeherd.store.etcd_writer import Moved, Writer

log = logging.getLogger(__name__)

CATCH_UP = 10.0  # seconds a writer waits for the watch to deliver a revision etcd accepted
RECONNECT_DELAY = 0.5  # seconds between two rounds of reconnecting to the endpoints
CONTENDED = 10.0  # seconds a transaction keeps being checked again while other writers get in first
SLICE = 32  # queued commits checked and sent together


class EtcdStore(EngineStore):
    """A `Store` kept in etcd under one key prefix."""

    def __init__(
        self, url: EtcdUrl | str, *, history: int = DEFAULT_HISTORY, cluster: str | None = None
    ) -> None:
        super().__init__(None, history=history)
        self.url = parse_etcd_url(url) if isinstance(url, str) else url
        self.cluster_id: str | None = None  # the marker's cluster id, once opened
        self._expected_cluster = cluster
        self._layout = Layout(self.url.prefix)
        self._client = EtcdClient(self.url.endpoints)
        self._stored_specs = Specs()  # the task specs etcd holds under the prefix
        self._txns = Writer(self._client, self._layout, self.url, self._stored_specs)
        self._upgrade = False  # the prefix holds tasks stored whole (schema 1): rewrite them first
        self._seen = 0  # the last etcd revision the feed took in
        self._floor = 0  # the revision at which the prefix was taken: nothing of this cluster is older
        self._held: list[tuple[str, str, AnyObject | None]] = []  # chunks of a split commit, not yet applied
        self._specs = SharedSpecs()  # decoded tasks share their spec (what a follower reads from etcd)
        # When each transaction was first refused for another writer's change (see `_requeue`).
        self._refused: weakref.WeakKeyDictionary[asyncio.Future[Committed], float] = (
            weakref.WeakKeyDictionary()
        )
        self._retry: list[_Pending] = []  # to be checked again, ahead of the queue
        self._advanced = asyncio.Event()
        self._failure: TreeherdError | None = None
        self._feed_task: asyncio.Task[None] | None = None

    def fence(self, key: bytes | None, create_revision: int = 0) -> None:
        """Guard every later write with `key`'s create revision (a leader's key: once it is gone or made
        again by another manager, this store's writes fail with `Fenced`); None removes the guard."""
        self._txns.fence = None if key is None else (key, create_revision)

    @property
    def endpoint(self) -> str | None:
        """The etcd endpoint in use (`HOST:PORT`)."""
        if self._client.endpoint is None:
            return None
        host, port = self._client.endpoint
        return f"{host}:{port}"

    # ---- opening and closing ----------------------------------------------------------------------
    async def open(self) -> None:
        await self._client.connect()
        try:
            await self._load()
        except BaseException:
            await self._client.close()
            raise
        self._feed_task = asyncio.create_task(self._feed(), name="etcd-feed")

    async def _load(self) -> None:
        layout = self._layout
        revision, kvs, said, self._floor = await take(
            self._client, layout, self.url.prefix, self._expected_cluster
        )
        self.cluster_id, self._upgrade = said
        specs = self._stored_specs
        for kv in kvs:
            spec = layout.parse_spec(kv.key)
            if spec is not None:
                specs.saw(spec, kv.value)
        objects = []
        for kv in kvs:
            if kv.key == layout.head:
                self._txns.head = kv.mod_revision
                self._txns.partial_open = kv.value == PARTIAL  # a writer died inside a split commit
            elif layout.parse(kv.key) is not None:
                objects.append(self._specs.share(decode_value(kv.value, kv.mod_revision, specs.values)))
        self._state.load(objects, revision)
        self._seen = specs.seen = revision
        # The history before this revision, as far back as `history` revisions and etcd still keeps it.
        start = max(self._floor + 1, self._txns.head - self._history + 1)
        first, changes = await read_history(self._client, layout, start, self._txns.head, specs.values)
        self._compacted_through = first - 1
        for change in changes:
            self._remember(change)

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
        for watch in list(self._watches):
            watch.close()
        await self._client.close()

    def watch(self, since: int | None = None) -> _EngineWatch:
        # Revisions before the prefix was taken hold nothing of this cluster: while the history still
        # reaches back to that point, resuming from any of them replays all of it.
        if since is not None and since < self._floor and self._compacted_through <= self._floor:
            since = self._floor
        return super().watch(since)

    # ---- the feed: etcd's watch into the working set ------------------------------------------------
    async def _feed(self) -> None:
        while not self._closed:
            try:
                async for response in self._client.watch(self._layout.root, self._seen + 1):
                    self._absorb(response.events)
            except TreeherdError as error:
                if self._closed:
                    return
                if isinstance(error, Refused):  # data this treeherd cannot read: a spec missing, a marker
                    self._fail(error)
                    return
                if error.code == "compacted":
                    self._fail(
                        Unavailable(
                            f"this store missed changes that etcd has compacted ({error}): restart it"
                        )
                    )
                    return
                log.warning("etcd watch of %s: %s; reconnecting", self.url.prefix, error)
                await self._reconnect()

    async def _reconnect(self) -> None:
        said = False
        while not self._closed:
            try:
                await self._client.connect()
                if said:
                    log.warning("etcd answers again at %s", self.endpoint)
                return
            except Unavailable as error:
                if not said:  # once: it is retried every RECONNECT_DELAY until etcd answers
                    log.warning("%s; retrying", error)
                    said = True
            await asyncio.sleep(RECONNECT_DELAY)

    def _absorb(self, events: Any) -> None:
        """Take in one watch response (whole revisions, in order)."""
        layout = self._layout
        revision = 0
        head: bytes | None = None
        for event in events:
            kv = event.kv
            if kv.mod_revision != revision:
                if revision:
                    self._end_revision(revision, head)
                revision, head = kv.mod_revision, None
            if kv.key == layout.head:
                head = kv.value
                continue
            deleted = event.type == rpc.Event.DELETE
            parsed = layout.parse(kv.key)
            if parsed is None:
                self._absorb_other(kv, deleted)
                continue
            if deleted:
                self._held.append((*parsed, None))
            else:
                obj = self._txns.take_own(kv.key, kv.value, kv.mod_revision) or self._specs.share(
                    decode_value(kv.value, kv.mod_revision, self._stored_specs.values)
                )
                self._held.append((*parsed, obj))
        if revision:
            self._end_revision(revision, head)

    def _absorb_other(self, kv: Any, deleted: bool) -> None:
        """A key that is not an object's: a task spec (put before or with the first task naming it, so
        known when that task is decoded), or the marker (another manager upgrading the prefix)."""
        spec = self._layout.parse_spec(kv.key)
        if spec is not None:
            self._stored_specs.saw(spec, None if deleted else kv.value)
        elif kv.key == self._layout.meta and not deleted:
            self._upgrade = read_marker(self.url.prefix, kv.value).upgrade

    def _end_revision(self, revision: int, head: bytes | None) -> None:
        self._seen = self._stored_specs.seen = revision
        if head == PARTIAL or not self._held:  # a split commit goes on; or no object changed
            if head == b"":  # a commit that left every object as it was still takes its revision
                self._state.revision = revision
            self._advance()
            return
        state = self._state
        events: list[Event] = []
        now: dict[tuple[str, str], AnyObject | None] = {}
        for kind, id, obj in self._held:
            current = now[(kind, id)] if (kind, id) in now else state.find(kind, id)
            now[(kind, id)] = obj
            if obj is not None:
                events.append(
                    Event(revision=revision, type="created" if current is None else "updated", object=obj)
                )
            elif current is not None:
                events.append(Event(revision=revision, type="deleted", object=current))
        self._held = []
        if events:
            state.replay(events, revision)
            change = Change(revision=revision, events=events)
            self._remember(change)
            self._publish(change)
        self._advance()

    def _advance(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    def _fail(self, error: TreeherdError) -> None:
        log.error("%s", error)
        self._failure = error
        self._advance()

    async def applied(self, revision: int) -> None:
        """Return once the working set has taken in etcd revision `revision` (a write made through
        another manager, say); `Unavailable` if it does not within CATCH_UP seconds."""
        await self._caught_up(revision)

    async def _caught_up(self, revision: int) -> None:
        """Wait until the feed has taken in `revision`."""
        try:
            async with asyncio.timeout(CATCH_UP):
                while self._seen < revision:
                    if self._failure is not None:
                        raise self._failure
                    await self._advanced.wait()
        except TimeoutError:
            raise Unavailable(
                f"etcd accepted revision {revision} but its watch did not deliver it within {CATCH_UP:g} s"
            ) from None

    # ---- the writer -------------------------------------------------------------------------------
    async def _write_batch(self, batch: list[_Pending]) -> None:
        # Each commit costs an etcd round trip, and a slice is answered once its last one is applied:
        # small slices keep the first commits of a long queue from waiting for the whole queue.
        try:
            for start in range(0, len(batch), SLICE):
                await self._write_slice(batch[start : start + SLICE])
                if self._retry:  # checked again first, then the rest, in the order they came
                    again = self._retry + batch[start + SLICE :]
                    self._retry = []
                    self._queue.extendleft(reversed(again))
                    return
        except BaseException:  # whatever stops the writer, no caller is left waiting for ever
            for pending in batch:
                _settle(
                    pending.future, Unavailable("the store stopped while writing: the outcome is unknown")
                )
            raise

    async def _write_slice(self, batch: list[_Pending]) -> None:
        try:
            if self._failure is not None:
                raise self._failure
            if self._txns.partial_open:
                await self._caught_up(await self._txns.close_partial())
            await self._upkeep()
        except TreeherdError as error:
            for pending in batch:
                _settle(pending.future, error)
            return
        state = self._state
        start = state.revision
        checked: list[tuple[_Pending, list[Event]]] = []
        undos = []
        for pending in batch:
            try:
                events, undo = state.apply(pending.ops, state.revision + 1)
            except Exception as error:  # a refused transaction, or a bug in a plan: it fails alone
                _settle(pending.future, error)
                continue
            if not events:  # only asserts: nothing to write, no revision spent
                if not pending.future.done():
                    pending.future.set_result(Committed(revision=state.revision, objects=[]))
                continue
            checked.append((pending, events))
            undos.append(undo)
        for undo in reversed(undos):
            state.rollback(undo)
        state.revision = start
        done: list[tuple[_Pending, list[Event], dict[bytes, int]]] = []
        for index, (pending, events) in enumerate(checked):
            try:
                written = await self._txns.send(list(pending.ops), events)
            except Moved as moved:
                # Another writer got in: what is left was checked on a state that is gone.
                self._txns.head = moved.head
                await self._requeue([p for p, _ in checked[index:]], moved.head, pending)
                break
            except Exception as error:
                failure = error if isinstance(error, TreeherdError) else Unavailable(str(error))
                _settle(pending.future, failure)
                rest = [p for p, _ in checked[index + 1 :]]
                if isinstance(failure, Unavailable):  # etcd cannot be reached: neither can the rest
                    for item in rest:
                        _settle(item.future, failure)
                else:  # the ones after it were checked on a state that included it: check them again
                    await self._requeue(rest, self._txns.head)
                break
            done.append((pending, events, written))
        if not done:
            return
        try:
            await self._caught_up(max(max(written.values(), default=0) for _, _, written in done))
        except TreeherdError as error:
            for pending, _, _ in done:
                _settle(pending.future, error)
            return
        for pending, events, written in done:
            objects = [_as_written(self._layout, event, written) for event in events]
            if not pending.future.done():
                pending.future.set_result(Committed(revision=max(written.values()), objects=objects))

    async def _upkeep(self) -> None:
        """Before writing: `etcd_prefix.upkeep`, on a working set that has every revision to the head."""
        if not self._upgrade and not self._stored_specs.due():
            return
        await self._caught_up(self._txns.head)
        try:
            tasks = self._state.all(Task)
            await upkeep(self._txns, self._layout, self.cluster_id or "", self._upgrade, tasks, self._held)
            self._upgrade = False
        except Moved as moved:  # another writer got in: the next write checks again on its state
            self._txns.head = moved.head
        await self._caught_up(self._txns.head)

    async def _requeue(self, pending: list[_Pending], head: int, refused: _Pending | None = None) -> None:
        """Have transactions checked again (before anything queued after them) once the feed caught up.
        `refused` is the one etcd refused because another writer got in: it gives up after CONTENDED
        seconds of that (the others were not sent)."""
        try:
            await self._caught_up(head)
        except TreeherdError as error:
            for item in pending:
                _settle(item.future, error)
            return
        now = time.monotonic()
        for item in pending:
            if item is refused:
                first = self._refused.setdefault(item.future, now)
                if now - first > CONTENDED:
                    _settle(item.future, Unavailable("other writers kept changing the store: try again"))
                    continue
            self._retry.append(item)


def _as_written(layout: Layout, event: Event, written: dict[bytes, int]) -> AnyObject:
    """An object of a committed transaction as the store now holds it (deleted ones as they were)."""
    obj = event.object
    if event.type == "deleted":
        return obj
    return msgspec.structs.replace(obj, version=written[layout.key(obj.kind, obj.id)])
