"""The in-memory state every backend serves reads from, with its indexes and its integrity checks.

`apply` runs one transaction's operations in order against the state and either applies all of them or
none (an undo log restores what a failing operation's predecessors changed). It enforces, for every
kind in the registry: ids are unique, unique keys are held by one object, references name existing
objects, referenced objects are not deleted, and `Update`/`Delete`/`Assert` are based on the current
version. Written objects are stamped with the transaction's revision as their version.

Every index the registry declares (unique keys, non-unique indexes, references, tallies) is kept in
step by `_put`, the one place an object is stored or removed: applies, rollbacks, replays and loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import msgspec

from treeherd.core.tree import integrity
from treeherd.model.base import Object
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound, Refused, VersionConflict
from treeherd.model.events import Event
from treeherd.model.kinds import KINDS, KindInfo
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Assert, Create, Delete, Op, Update

T = TypeVar("T", bound=Object)

# One undo record: the kind, the id, and the object stored before the change (None: there was none).
Undo = tuple[str, str, AnyObject | None]

# Which references point at each kind: target kind -> [(referring kind, reference name)].
_INCOMING: dict[str, list[tuple[str, str]]] = {name: [] for name in KINDS}
for _info in KINDS.values():
    for _ref in _info.references:
        _INCOMING[_ref.target].append((_info.name, _ref.name))


class State:
    """All objects by kind and id, plus unique, non-unique and reference indexes."""

    def __init__(self) -> None:
        self.revision = 0
        self._objects: dict[str, dict[str, AnyObject]] = {name: {} for name in KINDS}
        self._unique: dict[tuple[str, str], dict[str, str]] = {
            (info.name, key.name): {} for info in KINDS.values() for key in info.unique
        }
        self._indexes: dict[tuple[str, str], dict[str, set[str]]] = {
            (info.name, index.name): {} for info in KINDS.values() for index in info.indexes
        }
        self._refs: dict[tuple[str, str], dict[str, set[str]]] = {
            (info.name, ref.name): {} for info in KINDS.values() for ref in info.references
        }
        self._tallies: dict[tuple[str, str], dict[str, int]] = {
            (info.name, tally.name): {} for info in KINDS.values() for tally in info.tallies
        }

    # ---- reads (the View protocol) -------------------------------------------------------------
    def get(self, cls: type[T], id: str) -> T | None:
        obj = self._objects[cls.kind].get(id)
        return obj if obj is None or isinstance(obj, cls) else None

    def lookup(self, cls: type[T], index: str, key: str) -> T | None:
        owner = self._unique[(cls.kind, index)].get(key)
        return None if owner is None else self.get(cls, owner)

    def where(self, cls: type[T], index: str, key: str) -> list[T]:
        ids = self._indexes[(cls.kind, index)].get(key, ())
        objects = self._objects[cls.kind]
        # One class per kind, as in `referrers`: no per-object type check.
        return [objects[i] for i in ids]  # type: ignore[misc]

    def referrers(self, cls: type[T], reference: str, target_id: str) -> list[T]:
        ids = self._refs[(cls.kind, reference)].get(target_id, ())
        objects = self._objects[cls.kind]
        # Each kind's table holds objects of that kind's class only (`_put` files them by kind), so no
        # per-object type check: this is on the hot path of every component (100,000 tasks a service).
        return [objects[i] for i in ids]  # type: ignore[misc]

    def referrer_ids(self, cls: type[Object], reference: str, target_id: str) -> list[str]:
        return list(self._refs[(cls.kind, reference)].get(target_id, ()))

    def tally(self, cls: type[Object], name: str, key: str) -> int:
        return self._tallies[(cls.kind, name)].get(key, 0)

    def all(self, cls: type[T]) -> Iterable[T]:
        return (obj for obj in self._objects[cls.kind].values() if isinstance(obj, cls))

    def count(self, cls: type[Object]) -> int:
        return len(self._objects[cls.kind])

    def find(self, kind: str, id: str) -> AnyObject | None:
        """The object of `kind` with `id`, by the kind's name (for backends replaying stored keys)."""
        return self._objects[kind].get(id)

    def objects(self) -> Iterable[AnyObject]:
        """Every object of every kind (for snapshots and exports)."""
        for by_id in self._objects.values():
            yield from by_id.values()

    # ---- raw reads (for `prebatch.PreBatchView`, which corrects them) ---------------------------
    def table(self, kind: str) -> dict[str, AnyObject]:
        """The kind's objects by id, the state's own dict: read it, never change it."""
        return self._objects[kind]

    def filed_ids(self, kind: str, index: str, key: str) -> Iterable[str]:
        """The ids under `key` in a non-unique index, the state's own set: read it, never change it."""
        return self._indexes[(kind, index)].get(key, ())

    def referring_ids(self, kind: str, reference: str, target_id: str) -> Iterable[str]:
        """The ids whose `reference` names `target_id`, the state's own set: read it, never change it."""
        return self._refs[(kind, reference)].get(target_id, ())

    # ---- loading -------------------------------------------------------------------------------
    def load(self, objects: Iterable[AnyObject], revision: int) -> None:
        """Fill an empty state from a backend's records, without checks (they were checked when written)."""
        for obj in objects:
            self._put(type(obj).kind, obj.id, obj)
        self.revision = revision

    # ---- writes --------------------------------------------------------------------------------
    def apply(self, ops: Iterable[Op], revision: int) -> tuple[list[Event], list[Undo]]:
        """Apply one transaction at `revision`; all or nothing. Returns its events and its undo log.

        The state's revision moves to `revision` only if the transaction wrote something."""
        undo: list[Undo] = []
        events: list[Event] = []
        try:
            for op in ops:
                event = self._apply_one(op, revision, undo)
                if event is not None:
                    events.append(event)
            self._check_invariants(undo)
        except BaseException:
            self.rollback(undo)
            raise
        if events:  # a transaction that changed nothing (only asserts) takes no revision
            self.revision = revision
        return events, undo

    def _check_invariants(self, undo: list[Undo]) -> None:
        """Cross-object invariants, on the state the transaction lands on (see core.tree.integrity)."""
        before: dict[tuple[str, str], AnyObject | None] = {}
        checked = integrity.CHECKED_KINDS
        for kind, id, previous in undo:
            if kind in checked:
                before.setdefault((kind, id), previous)
        for (kind, id), previous in before.items():
            current = self._objects[kind].get(id)
            if current is not None:
                integrity.check(self, current, previous)

    def rollback(self, undo: list[Undo]) -> None:
        """Restore what the undo log recorded, newest first."""
        for kind, id, previous in reversed(undo):
            self._put(kind, id, previous)

    def _apply_one(self, op: Op, revision: int, undo: list[Undo]) -> Event | None:
        obj = op.object
        info = KINDS[type(obj).kind]
        current = self._objects[info.name].get(obj.id)
        if isinstance(op, Create):
            if current is not None:
                raise AlreadyExists(f"a {info.name} with id {obj.id!r} already exists", field="id")
            self._check_unique(info, obj)
            self._check_references(info, obj, None)
            stored = msgspec.structs.replace(obj, version=revision)
            undo.append((info.name, obj.id, self._put(info.name, obj.id, stored)))
            return Event(revision=revision, type="created", object=stored)
        if current is None:
            raise NotFound(f"{info.name} {obj.id!r} does not exist (it may have been deleted meanwhile)")
        if current.version != obj.version:
            raise VersionConflict(
                f"{info.name} {_describe(current)} changed (version {obj.version} is now {current.version}):"
                " read it again and retry",
                field="version",
            )
        if isinstance(op, Assert):
            return None
        if isinstance(op, Update):
            if type(current) is not type(obj):
                raise InvalidInput(f"{info.name} {obj.id!r} cannot change its kind")
            self._check_unique(info, obj)
            self._check_references(info, obj, current)
            stored = msgspec.structs.replace(obj, version=revision)
            undo.append((info.name, obj.id, self._put(info.name, obj.id, stored)))
            return Event(revision=revision, type="updated", object=stored)
        assert isinstance(op, Delete)
        self._check_unreferenced(info, current)
        undo.append((info.name, obj.id, self._put(info.name, obj.id, None)))
        return Event(revision=revision, type="deleted", object=current)

    def _check_unique(self, info: KindInfo, obj: AnyObject) -> None:
        for key in info.unique:
            index = self._unique[(info.name, key.name)]
            for value in key.keys(obj):
                owner = index.get(value)
                if owner is not None and owner != obj.id:
                    holder = self._objects[info.name][owner]
                    raise AlreadyExists(
                        f"{info.name} {key.name} {value!r} is already held by {_describe(holder)}",
                        field=key.name,
                    )

    def _check_references(self, info: KindInfo, obj: AnyObject, current: AnyObject | None) -> None:
        for ref in info.references:
            new = ref.ids(obj)
            known = ref.ids(current) if current is not None else ()
            if new == known:  # most updates (task status, say) keep their references
                continue
            targets = self._objects[ref.target]
            for target in new:
                if target not in known and target not in targets:
                    raise NotFound(
                        f"{ref.target} {target!r} referenced as {ref.name} does not exist", field=ref.name
                    )

    def _check_unreferenced(self, info: KindInfo, obj: AnyObject) -> None:
        for kind, ref_name in _INCOMING[info.name]:
            referrers = self._refs[(kind, ref_name)].get(obj.id)
            if referrers:
                raise Refused(
                    f"{info.name} {_describe(obj)} is still referenced by {len(referrers)} {kind}(s) as {ref_name}"
                )

    def _put(self, kind: str, id: str, new: AnyObject | None) -> AnyObject | None:
        """Replace the stored object (None deletes), keeping the indexes in step. Returns the old one.

        An index entry is touched only when the object's keys under it change: most writes (a task's
        status) keep every key and reference, and this is the store's hottest path."""
        info = KINDS[kind]
        by_id = self._objects[kind]
        old = by_id.get(id)
        if new is None:
            by_id.pop(id, None)
        else:
            by_id[id] = new
        for key in info.unique:
            old_values = key.keys(old) if old is not None else ()
            new_values = key.keys(new) if new is not None else ()
            if old_values == new_values:
                continue
            index = self._unique[(kind, key.name)]
            for value in old_values:
                if index.get(value) == id:
                    del index[value]
            for value in new_values:
                index[value] = id
        for filed in info.indexes:
            old_keys = filed.keys(old) if old is not None else ()
            new_keys = filed.keys(new) if new is not None else ()
            if old_keys == new_keys:
                continue
            _refile(self._indexes[(kind, filed.name)], id, old_keys, new_keys)
        for ref in info.references:
            old_targets = ref.ids(old) if old is not None else ()
            new_targets = ref.ids(new) if new is not None else ()
            if old_targets == new_targets:
                continue
            _refile(self._refs[(kind, ref.name)], id, old_targets, new_targets)
        for tally in info.tallies:
            old_counted = tally.keys(old) if old is not None else ()
            new_counted = tally.keys(new) if new is not None else ()
            if old_counted == new_counted:
                continue
            _recount(self._tallies[(kind, tally.name)], old_counted, new_counted)
        return old

    def replay(self, events: Iterable[Event], revision: int) -> None:
        """Put the outcome of a transaction `apply` accepted back after it was rolled back: the same
        objects, without the checks (nothing else changed the state in between, so they would pass)."""
        for event in events:
            obj = event.object
            self._put(type(obj).kind, obj.id, None if event.type == "deleted" else obj)
        self.revision = revision


def _refile(index: dict[str, set[str]], id: str, old: Iterable[str], new: Iterable[str]) -> None:
    """Move `id` from the holders of its `old` keys to those of its `new` ones in a many-to-one index
    (a non-unique index or a reference index); a key left with no holder is dropped."""
    for key in old:
        holders = index.get(key)
        if holders is not None:
            holders.discard(id)
            if not holders:
                del index[key]
    for key in new:
        index.setdefault(key, set()).add(id)


def _recount(counts: dict[str, int], old: Iterable[str], new: Iterable[str]) -> None:
    """Move one object's count from its `old` keys to its `new` ones; a key counted zero is dropped."""
    for key in old:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]
    for key in new:
        counts[key] = counts.get(key, 0) + 1


def _describe(obj: AnyObject) -> str:
    """A short human name for an object in error messages."""
    for attr in ("path", "hostname", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            return repr(value)
    return repr(obj.id)
