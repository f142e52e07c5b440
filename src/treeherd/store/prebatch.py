"""What the engine's readers see: the committed state, also while a batch is written with the state
holding it already.

The engine applies a batch of transactions once, checked, and keeps it applied while the backend makes
it durable. Readers must not see it before then (a failed write would have been read), so for that
window the store's `CommittedView` answers through a `PreBatchView`: every read answers from the
state's own tables and indexes, corrected for the objects the batch changed, whose earlier versions
the batch's undo logs hold. Most of the state is untouched by a batch, so a read costs what it costs
on the state plus a dictionary lookup per object; the corrections of an index (and of a kind's count)
are worked out once, on the window's first read of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from treeherd.model.base import Object
from treeherd.model.kinds import KINDS
from treeherd.model.objects import AnyObject
from treeherd.store.state import State, Undo

T = TypeVar("T", bound=Object)

# For a non-unique index or a reference, per key: the ids filed under it now that were not before the
# batch, and the ids filed under it before that are not now.
_Moves = dict[str, tuple[set[str], set[str]]]
_NO_MOVES: tuple[set[str], set[str]] = (set(), set())


class CommittedView:
    """What the engine's `view()` hands out: the committed state, now and later. Between writes that is
    the state itself, during one a `PreBatchView`; the reads are the current one's own bound methods,
    switched by `show`, so a caller that holds the view across awaits (a plan made step by step, a
    listing read a slice at a time) never reads a batch that is not yet durable, nor a stale window,
    and a read costs what it costs on the state."""

    get: Any
    lookup: Any
    where: Any
    referrers: Any
    referrer_ids: Any
    tally: Any
    all: Any
    count: Any
    find: Any
    objects: Any

    def __init__(self, current: State | PreBatchView) -> None:
        self.show(current)

    def show(self, current: State | PreBatchView) -> None:
        self._current = current
        for name in _READS:
            setattr(self, name, getattr(current, name))

    @property
    def revision(self) -> int:
        return self._current.revision


_READS = ("get", "lookup", "where", "referrers", "referrer_ids", "tally", "all", "count", "find", "objects")


class PreBatchView:
    """The `View` of `state` as it was before the transactions whose undo logs are `undos` (applied in
    that order) were applied, at `revision`. Valid until the state changes again."""

    def __init__(self, state: State, undos: Iterable[Sequence[Undo]], revision: int) -> None:
        self.revision = revision
        self._state = state
        # kind -> id -> the object before the batch (None: created by it). The first record of an id
        # is the one from before the batch; later ones are the batch's own intermediate versions.
        before: dict[str, dict[str, AnyObject | None]] = {}
        for undo in undos:
            for kind, id, previous in undo:
                by_id = before.get(kind)
                if by_id is None:
                    before[kind] = {id: previous}
                elif id not in by_id:
                    by_id[id] = previous
        self._before = before
        self._owners: dict[tuple[str, str], dict[str, str | None]] = {}
        self._moves: dict[tuple[str, str, str], _Moves] = {}
        self._counts: dict[tuple[str, str], Counter[str]] = {}
        self._sizes: dict[str, int] = {}

    # ---- the View protocol ---------------------------------------------------------------------
    def get(self, cls: type[T], id: str) -> T | None:
        changed = self._before.get(cls.kind)
        if changed is not None and id in changed:
            obj = changed[id]
            return obj if obj is None or isinstance(obj, cls) else None
        return self._state.get(cls, id)

    def lookup(self, cls: type[T], index: str, key: str) -> T | None:
        if cls.kind not in self._before:
            return self._state.lookup(cls, index, key)
        owners = self._owners.get((cls.kind, index))
        if owners is None:
            owners = self._owners[(cls.kind, index)] = self._unique_owners(cls.kind, index)
        if key in owners:
            owner = owners[key]
            return None if owner is None else self.get(cls, owner)
        # Nobody the batch changed held or holds `key`: its holder now held it before.
        return self._state.lookup(cls, index, key)

    def where(self, cls: type[T], index: str, key: str) -> list[T]:
        ids = self._state.filed_ids(cls.kind, index, key)
        return self._objects(cls, ids, self._moved(cls.kind, "index", index, key))

    def referrers(self, cls: type[T], reference: str, target_id: str) -> list[T]:
        ids = self._state.referring_ids(cls.kind, reference, target_id)
        return self._objects(cls, ids, self._moved(cls.kind, "reference", reference, target_id))

    def referrer_ids(self, cls: type[Object], reference: str, target_id: str) -> list[str]:
        ids = self._state.referring_ids(cls.kind, reference, target_id)
        gone, came = self._moved(cls.kind, "reference", reference, target_id)
        if not gone and not came:
            return list(ids)
        out = [id for id in ids if id not in gone]
        out.extend(came)
        return out

    def tally(self, cls: type[Object], name: str, key: str) -> int:
        count = self._state.tally(cls, name, key)
        if cls.kind not in self._before:
            return count
        corrections = self._counts.get((cls.kind, name))
        if corrections is None:
            corrections = self._counts[(cls.kind, name)] = self._tally_corrections(cls.kind, name)
        return count + corrections.get(key, 0)

    def all(self, cls: type[T]) -> Iterable[T]:
        changed = self._before.get(cls.kind)
        if changed is None:
            return self._state.all(cls)
        return (obj for obj in self._as_before(cls.kind, changed) if isinstance(obj, cls))

    def count(self, cls: type[Object]) -> int:
        count = self._state.count(cls)
        changed = self._before.get(cls.kind)
        if changed is None:
            return count
        difference = self._sizes.get(cls.kind)
        if difference is None:  # objects deleted by the batch less those it created, once per window
            table = self._state.table(cls.kind)
            difference = sum((previous is not None) - (id in table) for id, previous in changed.items())
            self._sizes[cls.kind] = difference
        return count + difference

    # ---- the State's extras (snapshots, exports) ------------------------------------------------
    def find(self, kind: str, id: str) -> AnyObject | None:
        changed = self._before.get(kind)
        if changed is not None and id in changed:
            return changed[id]
        return self._state.find(kind, id)

    def objects(self) -> Iterable[AnyObject]:
        for kind in KINDS:
            changed = self._before.get(kind)
            if changed is None:
                yield from self._state.table(kind).values()
            else:
                yield from self._as_before(kind, changed)

    # ---- corrections ---------------------------------------------------------------------------
    def _as_before(self, kind: str, changed: dict[str, AnyObject | None]) -> Iterable[AnyObject]:
        for id, obj in self._state.table(kind).items():
            if id not in changed:
                yield obj
        for previous in changed.values():
            if previous is not None:
                yield previous

    def _objects(self, cls: type[T], ids: Iterable[str], moves: tuple[set[str], set[str]]) -> list[T]:
        table = self._state.table(cls.kind)
        changed = self._before.get(cls.kind)
        # One class per kind (see `State.referrers`): no per-object type check.
        if changed is None:
            return [table[id] for id in ids]  # type: ignore[misc]
        gone, came = moves
        # An id filed now and not `gone` was filed before too, so it existed before: `changed` holds
        # an object for it, not None.
        out = [changed[id] if id in changed else table[id] for id in ids if id not in gone]
        out.extend(changed[id] for id in came)
        return out  # type: ignore[return-value]

    def _moved(self, kind: str, family: str, name: str, key: str) -> tuple[set[str], set[str]]:
        if kind not in self._before:
            return _NO_MOVES
        moves = self._moves.get((kind, family, name))
        if moves is None:
            info = KINDS[kind]
            if family == "index":
                keys_of = next(index.keys for index in info.indexes if index.name == name)
            else:
                keys_of = next(ref.ids for ref in info.references if ref.name == name)
            moves = self._moves[(kind, family, name)] = self._index_moves(kind, keys_of)
        return moves.get(key, _NO_MOVES)

    def _key_changes(
        self, kind: str, keys_of: Callable[[AnyObject], Iterable[str]]
    ) -> Iterator[tuple[str, Iterable[str], Iterable[str]]]:
        """(id, keys before the batch, keys now) of each object of `kind` the batch changed whose keys
        under `keys_of` differ: most changes (a task's status) keep every key."""
        table = self._state.table(kind)
        for id, previous in self._before[kind].items():
            current = table.get(id)
            old = keys_of(previous) if previous is not None else ()
            new = keys_of(current) if current is not None else ()
            if old != new:
                yield id, old, new

    def _index_moves(self, kind: str, keys_of: Callable[[AnyObject], Iterable[str]]) -> _Moves:
        moves: _Moves = {}
        for id, old, new in self._key_changes(kind, keys_of):
            old_set, new_set = set(old), set(new)
            for key in new_set - old_set:
                moves.setdefault(key, (set(), set()))[0].add(id)
            for key in old_set - new_set:
                moves.setdefault(key, (set(), set()))[1].add(id)
        return moves

    def _unique_owners(self, kind: str, index: str) -> dict[str, str | None]:
        """Who held each unique key the batch's objects hold or held (None: nobody). Every changed
        object counts, its keys kept or not (not `_key_changes`): `lookup` must answer with its object
        from before the batch, not the state's."""
        keys_of = next(key.keys for key in KINDS[kind].unique if key.name == index)
        table = self._state.table(kind)
        owners: dict[str, str | None] = {}
        changed = self._before[kind]
        for id in changed:
            current = table.get(id)
            if current is not None:
                for key in keys_of(current):
                    owners[key] = None
        # Then the holders from before: a key held before and now by others than the batch's objects
        # is not in `owners` at all (a unique key has one holder, and theirs did not change).
        for id, previous in changed.items():
            if previous is not None:
                for key in keys_of(previous):
                    owners[key] = id
        return owners

    def _tally_corrections(self, kind: str, name: str) -> Counter[str]:
        keys_of = next(tally.keys for tally in KINDS[kind].tallies if tally.name == name)
        corrections: Counter[str] = Counter()
        for _, old, new in self._key_changes(kind, keys_of):
            for key in old:
                corrections[key] += 1
            for key in new:
                corrections[key] -= 1
        return corrections
