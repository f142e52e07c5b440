"""Copying a cluster's objects between stores, and snapshots of them in a file (`treeherd store ...`).

A snapshot is MessagePack: `{"format": "treeherd-snapshot", "version": 1, "revision": R, "objects": [...]}`,
each object encoded as the stores encode it (`codec`). Objects go into an empty store as `Create`
transactions of at most `BATCH` objects, every object after what it references, so each transaction
passes the store's checks on its own. Versions are the target store's (it stamps its own revisions).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import msgspec

from treeherd.model.errors import InvalidInput, Refused
from treeherd.model.kinds import KINDS
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Create
from treeherd.store.base import Store
from treeherd.store.codec import decode, encode

FORMAT = "treeherd-snapshot"
VERSION = 1
BATCH = 500


class _Snapshot(msgspec.Struct):
    format: str
    version: int
    revision: int
    objects: list[bytes]


def everything(store: Store) -> list[AnyObject]:
    """Every object of a store's view, each after the objects it references."""
    view = store.view()
    return ordered(cast(AnyObject, obj) for info in KINDS.values() for obj in view.all(info.type))


def ordered(objects: Iterable[AnyObject]) -> list[AnyObject]:
    """The objects in an order where each comes after every object it references."""
    by_key = {(obj.kind, obj.id): obj for obj in objects}
    placed: set[tuple[str, str]] = set()
    out: list[AnyObject] = []
    for start in by_key:
        stack = [(start, False)]
        while stack:
            key, expanded = stack.pop()
            if key in placed:
                continue
            obj = by_key[key]
            if expanded:
                placed.add(key)
                out.append(obj)
                continue
            stack.append((key, True))
            for ref in KINDS[key[0]].references:
                for target in ref.ids(obj):
                    if (ref.target, target) in by_key and (ref.target, target) not in placed:
                        stack.append(((ref.target, target), False))
    return out


def encode_snapshot(revision: int, objects: list[AnyObject]) -> bytes:
    return msgspec.msgpack.encode(
        _Snapshot(format=FORMAT, version=VERSION, revision=revision, objects=[encode(o) for o in objects])
    )


def decode_snapshot(data: bytes, name: str) -> tuple[int, list[AnyObject]]:
    """The revision and objects of a snapshot file; `InvalidInput` when it is not one this treeherd reads."""
    try:
        snapshot = msgspec.msgpack.decode(data, type=_Snapshot)
        if snapshot.format != FORMAT:
            raise InvalidInput(f"{name} is not a treeherd snapshot")
        if snapshot.version != VERSION:
            raise InvalidInput(
                f"{name} is snapshot version {snapshot.version}; this treeherd reads {VERSION}"
            )
        return snapshot.revision, [decode(item) for item in snapshot.objects]
    except msgspec.DecodeError as error:
        raise InvalidInput(f"{name} is not a treeherd snapshot ({error})") from None


def count(store: Store) -> int:
    view = store.view()
    return sum(view.count(info.type) for info in KINDS.values())


async def copy_into(store: Store, objects: list[AnyObject], *, batch: int = BATCH) -> int:
    """Create `objects` (in `ordered` order) in an empty store; returns the store's revision after."""
    held = count(store)
    if held:
        raise Refused(f"the target store already holds {held} objects: copy into an empty store")
    for start in range(0, len(objects), batch):
        await store.commit([Create(obj) for obj in objects[start : start + batch]])
    return store.revision
