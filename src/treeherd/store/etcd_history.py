"""The change history of an etcd store read back from etcd itself, so a restarted manager can resume watches.

When the store opens, the revisions its prefix went through before (up to the store's `history`, and
never before the revision etcd has compacted to) are read with a watch from the past, with each key's
previous value so a deletion can carry the object as it was. They become the same `Change`s the live
feed makes: one per commit, the chunks of a split commit together. A task stored without its spec is
decoded once the whole range is read, with the specs etcd holds now and those the range put or deleted
(a spec is deleted only after the last task naming it: that deletion, with the value it had, is in the
range whenever one of those tasks is).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aetcd import rpc

from treeherd.model.errors import Compacted
from treeherd.model.events import Change, Event, EventType
from treeherd.model.services import TaskSpec
from treeherd.store.codec import decode_spec
from treeherd.store.etcd_client import EtcdClient
from treeherd.store.etcd_layout import PARTIAL, Layout
from treeherd.store.etcd_specs import decode_value

_Raw = tuple[EventType, bytes, int]  # an event's type, and the value and mod_revision of its object


async def read_history(
    client: EtcdClient, layout: Layout, start: int, head: int, specs: Mapping[bytes, TaskSpec]
) -> tuple[int, list[Change]]:
    """The changes from revision `start` through `head` (the last revision the prefix was written at),
    `specs` being the specs etcd holds at `head`. Returns the first revision actually read (later than
    `start` when etcd compacted past it)."""
    while start <= head:
        try:
            return start, await _read(client, layout, start, head, specs)
        except Compacted as compacted:
            start = max(start + 1, compacted.oldest + 1)
    return start, []


async def _read(
    client: EtcdClient, layout: Layout, start: int, head: int, specs: Mapping[bytes, TaskSpec]
) -> list[Change]:
    raw: list[tuple[int, list[_Raw]]] = []
    held: list[_Raw] = []
    seen_specs: dict[bytes, bytes] = {}
    revision = 0
    partial = False
    stream = client.watch(layout.root, start, prev_kv=True)
    async with contextlib.aclosing(stream):
        async for response in stream:
            for event in response.events:
                kv = event.kv
                if kv.mod_revision != revision:
                    if revision and not partial and held:
                        raw.append((revision, held))
                        held = []
                    revision, partial = kv.mod_revision, False
                if kv.key == layout.head:
                    partial = kv.value == PARTIAL
                    continue
                deleted = event.type == rpc.Event.DELETE
                spec = layout.parse_spec(kv.key)
                if spec is not None:
                    if not deleted:
                        seen_specs[spec] = kv.value
                    elif event.HasField("prev_kv"):
                        seen_specs[spec] = event.prev_kv.value
                    continue
                if layout.parse(kv.key) is None:
                    continue
                if deleted:
                    if event.HasField("prev_kv"):
                        held.append(("deleted", event.prev_kv.value, event.prev_kv.mod_revision))
                else:
                    held.append(("created" if kv.version == 1 else "updated", kv.value, kv.mod_revision))
            if revision >= head:
                break
    if revision and not partial and held:
        raw.append((revision, held))
    every = dict(specs)
    every.update((key, decode_spec(value)) for key, value in seen_specs.items() if key not in every)
    return [
        Change(
            revision=revision,
            events=[
                Event(revision=revision, type=type, object=decode_value(value, mod, every))
                for type, value, mod in events
            ],
        )
        for revision, events in raw
    ]
