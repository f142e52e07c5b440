"""Task specs on etcd, stored apart from their tasks: which specs etcd holds, a task's stored value, and
which specs nothing names any more.

A task's spec is about half of its bytes and never changes over its life, while its status changes
several times: stored in the task's value, every status change wrote it to etcd again (and to every
member's log). So a task's value holds the task without its spec and the spec's key, and each spec is
stored once under `PREFIX/spec/HEX` (the key is a hash of the spec's bytes, `codec.SpecKeys`), put by
the first transaction whose tasks need it and not again while it is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from treeherd.model.errors import Refused
from treeherd.model.objects import AnyObject
from treeherd.model.services import Task, TaskSpec
from treeherd.store.codec import (
    SPEC_KEY_BYTES,
    SpecKeys,
    decode,
    decode_spec,
    encode_spec,
    encode_without_spec,
    spec_key,
)

# The first byte of a task stored without its spec: a byte MessagePack never uses, so a value in the
# format of store schema 1 (MessagePack of the whole object) is told apart and still read.
SPLIT = b"\xc1"
COLLECT_AFTER = 64  # new specs seen since the last collection of unused ones that start another one


def _key_now(spec: TaskSpec) -> bytes:
    """The key `SpecKeys` gives `spec` today."""
    return spec_key(encode_spec(spec))


class MissingSpec(Refused):
    """A task names a spec etcd does not hold under the prefix: the data was changed outside treeherd."""


def encode_task(task: Task, key: bytes) -> bytes:
    """The stored value of `task` (its version left at 0: the key's mod_revision is the version)."""
    return SPLIT + key + encode_without_spec(msgspec.structs.replace(task, version=0))


def spec_key_of(value: bytes) -> bytes | None:
    """The key of the spec a stored task value names; None for a value that holds the whole object."""
    return value[1 : 1 + SPEC_KEY_BYTES] if value[:1] == SPLIT else None


def decode_value(value: bytes, mod_revision: int, specs: Mapping[bytes, TaskSpec]) -> AnyObject:
    """The object stored as `value`, its spec put back if it is a task stored without it, with its
    version: the key's `mod_revision`."""
    if value[:1] != SPLIT:
        return msgspec.structs.replace(decode(value), version=mod_revision)
    key = value[1 : 1 + SPEC_KEY_BYTES]
    spec = specs.get(key)
    obj = decode(value[1 + SPEC_KEY_BYTES :])
    if type(obj) is not Task:
        raise MissingSpec(
            f"a value stored as a task without its spec holds a {obj.kind}: the data is damaged"
        )
    if spec is None:
        raise MissingSpec(
            f"task {obj.id} names spec {key.hex()}, which etcd does not hold under this prefix (the data"
            " was changed outside treeherd): restore the cluster from a snapshot (treeherd store restore)"
        )
    return msgspec.structs.replace(obj, spec=spec, version=mod_revision)


class Specs:
    """The specs etcd holds under one prefix as this store's feed last saw them, and those this store
    wrote that its feed has not seen yet.

    A spec counts as held if the feed saw it put and not deleted since, or if this store wrote it at a
    revision the feed has not reached: nothing written after it (a deletion by another writer included)
    has been seen then, and this store's next write is refused until it has (the head compare)."""

    def __init__(self) -> None:
        self.values: dict[bytes, TaskSpec] = {}
        self.keys = SpecKeys()
        self.seen = 0  # the last revision the feed took in
        self._recent: dict[bytes, int] = {}  # spec key -> revision this store wrote it at
        self._after_collect = 0  # len(values) after the last collection of unused specs

    def held(self, key: bytes) -> bool:
        return key in self.values or self._recent.get(key, 0) > self.seen

    def saw(self, key: bytes, value: bytes | None) -> None:
        """The feed saw a spec put (`value`) or deleted (None)."""
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = decode_spec(value)
            self._recent.pop(key, None)

    def wrote(self, keys: Iterable[bytes], revision: int) -> None:
        """This store wrote these specs at `revision`."""
        if revision > self.seen:
            for key in keys:
                self._recent[key] = revision

    def due(self) -> bool:
        """Whether enough new specs came since the last collection to look for unused ones again."""
        return not self._after_collect or len(self.values) >= self._after_collect + COLLECT_AFTER

    def unused(self, tasks: Iterable[AnyObject]) -> list[bytes]:
        """The specs etcd holds that none of `tasks` names (every live task, and those of a split commit
        not applied yet: a spec is deleted only when nothing in etcd names it)."""
        named = {self.keys.key(task)[0] for task in tasks if type(task) is Task}
        # A spec is kept if a task's spec has its key, or has its content: a spec written by an older
        # treeherd whose encoding differed has another key than its tasks' specs have now.
        return [key for key, spec in self.values.items() if key not in named and _key_now(spec) not in named]

    def collected(self, deleted: int) -> None:
        """The unused specs were deleted (`deleted` of them): the next collection is due after
        COLLECT_AFTER more."""
        self._after_collect = max(1, len(self.values) - deleted)
