"""The change history of an etcd store read back from etcd itself, so a restarted manager can resume watches.

When the store opens, the revisions its prefix went through before (up to the store's `history`, and
never before the revision etcd has compacted to) are read with a watch from the past, with each key's
previous value so a deletion can carry the object as it was. They become the same `Change`s the live
feed makes: one per commit, the chunks of a split commit together.
"""

from __future__ import annotations

import contextlib

from aetcd import rpc

from treeherd.model.errors import Compacted
from treeherd.model.events import Change, Event
from treeherd.store.etcd_client import EtcdClient
from treeherd.store.etcd_layout import PARTIAL, Layout, decode_at


async def read_history(client: EtcdClient, layout: Layout, start: int, head: int) -> tuple[int, list[Change]]:
    """The changes from revision `start` through `head` (the last revision the prefix was written at).
    Returns the first revision actually read (later than `start` when etcd compacted past it)."""
    while start <= head:
        try:
            return start, await _read(client, layout, start, head)
        except Compacted as compacted:
            start = max(start + 1, compacted.oldest + 1)
    return start, []


async def _read(client: EtcdClient, layout: Layout, start: int, head: int) -> list[Change]:
    changes: list[Change] = []
    held: list[Event] = []
    revision = 0
    partial = False
    stream = client.watch(layout.root, start, prev_kv=True)
    async with contextlib.aclosing(stream):
        async for response in stream:
            for event in response.events:
                kv = event.kv
                if kv.mod_revision != revision:
                    if revision and not partial and held:
                        changes.append(_change(revision, held))
                        held = []
                    revision, partial = kv.mod_revision, False
                if kv.key == layout.head:
                    partial = kv.value == PARTIAL
                    continue
                if layout.parse(kv.key) is None:
                    continue
                if event.type == rpc.Event.DELETE:
                    if event.HasField("prev_kv"):
                        before = decode_at(event.prev_kv.value, event.prev_kv.mod_revision)
                        held.append(Event(revision=0, type="deleted", object=before))
                else:
                    obj = decode_at(kv.value, kv.mod_revision)
                    if kv.version == 1:
                        held.append(Event(revision=0, type="created", object=obj))
                    else:
                        held.append(Event(revision=0, type="updated", object=obj))
            if revision >= head:
                break
    if revision and not partial and held:
        changes.append(_change(revision, held))
    return changes


def _change(revision: int, events: list[Event]) -> Change:
    return Change(
        revision=revision, events=[Event(revision=revision, type=e.type, object=e.object) for e in events]
    )
