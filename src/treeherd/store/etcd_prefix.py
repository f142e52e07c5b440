"""Taking and keeping an etcd prefix: its marker checked (or written, on an empty prefix) when a store
opens, a prefix of an older schema upgraded in place, and the task specs no task names deleted.

The last two are done by the store that writes (on a cluster of managers, the leader: followers forward their
writes to it), in etcd transactions of their own, each guarded by the head compare (and the leader's
fence) like any commit, and only once its working set has every revision up to the head: what it
decided on is then exactly what etcd holds, or the transaction is refused and nothing is changed.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from typing import Any

from treeherd.model.errors import Refused, Unavailable
from treeherd.model.events import Event
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Op, Update
from treeherd.model.services import Task
from treeherd.store import etcd_client as etcd
from treeherd.store.etcd_client import EtcdClient
from treeherd.store.etcd_layout import PER_KEY, Layout, Marker, Piece, marker, plan_pieces, read_marker
from treeherd.store.etcd_writer import Writer

_UPGRADE_BATCH = 5_000  # tasks planned at once by an upgrade (then sent a transaction at a time)


async def take(
    client: EtcdClient, layout: Layout, prefix: str, expected: str | None
) -> tuple[int, list[Any], Marker, int]:
    """Every key under the prefix at one revision, with what its marker says and the revision the
    marker was created at; on an empty prefix, the marker is written first (for cluster `expected`, or
    a new one). `Refused` for a prefix that holds other data, another cluster or a schema not read."""
    for _ in range(3):
        revision, kvs = await client.range_prefix(layout.root)
        meta = next((kv for kv in kvs if kv.key == layout.meta), None)
        if meta is not None:
            break
        if kvs:
            raise Refused(
                f"the etcd prefix {prefix} holds {len(kvs)} key(s) but no treeherd marker:"
                " it belongs to something else; choose another prefix with ?prefix= in --store"
            )
        cluster = expected or uuid.uuid4().hex
        # Two managers may take an empty prefix at once: the marker is created only where absent.
        await client.txn(
            [etcd.compare(layout.meta, "create", 0)],
            [etcd.put(layout.meta, marker(cluster)), etcd.put(layout.head, b"")],
        )
    else:
        raise Unavailable(f"could not take the etcd prefix {prefix}: it keeps changing")
    said = read_marker(prefix, meta.value)
    if expected is not None and said.cluster != expected:
        raise Refused(
            f"the etcd prefix {prefix} holds cluster {said.cluster}, not {expected}"
            " (the cluster this manager belongs to): point --store at that cluster's prefix"
        )
    return revision, kvs, said, meta.create_revision


async def upkeep(
    writer: Writer,
    layout: Layout,
    cluster: str,
    upgrading: bool,
    tasks: Iterable[Task],
    held: Iterable[tuple[str, str, AnyObject | None]],
) -> None:
    """Upgrade the prefix if it is `upgrading`, else delete unused specs if they are due: `tasks` are
    the working set's, `held` the objects of a split commit not applied yet. Raises `Moved` when
    another writer got in: the caller checks again once it has seen that write."""
    if upgrading:
        # The tasks etcd holds: the working set's, with the split commit's changes over them.
        current = {task.id: task for task in tasks}
        for kind, id, obj in held:
            if kind == Task.kind:
                current.pop(id, None)
                if type(obj) is Task:
                    current[id] = obj
        await upgrade(writer, layout, cluster, list(current.values()))
    elif writer.specs.due():
        # A task the split commit deleted still counts: a spec kept one collection longer is harmless.
        unused = writer.specs.unused(itertools.chain(tasks, (obj for _, _, obj in held if type(obj) is Task)))
        if unused:
            await collect(writer, layout, unused)
        writer.specs.collected(len(unused))


async def upgrade(writer: Writer, layout: Layout, cluster: str, tasks: list[Task]) -> None:
    """Rewrite a prefix of schema 1 as schema 2: every task without its spec, each spec once.

    The marker says schema 2, `upgrading`, before any task is rewritten: from then on no older treeherd
    opens the prefix (it could not read the new values). The tasks are rewritten in etcd transactions
    within etcd's limits, each a commit of its own (whole in etcd, so a manager that stops halfway
    leaves a prefix every manager of this treeherd reads, and the next writer starts the rewrite again),
    each compared with the task's version; then the marker loses `upgrading`. Managers of an older
    treeherd on the prefix must be stopped before: their watch cannot read the new values."""
    await writer.send_each([], last=[etcd.put(layout.meta, marker(cluster, upgrading=True))])
    for start in range(0, len(tasks), _UPGRADE_BATCH):
        batch = tasks[start : start + _UPGRADE_BATCH]
        ops: list[Op] = [Update(task) for task in batch]
        events = [Event(revision=0, type="updated", object=task) for task in batch]
        await writer.send_each(plan_pieces(layout, ops, events, writer.specs))
    await writer.send_each([], last=[etcd.put(layout.meta, marker(cluster))])


async def collect(writer: Writer, layout: Layout, unused: list[bytes]) -> None:
    """Delete specs no task names (`Specs.unused`, computed on the working set at the writer's head).

    Why here, by the writing store and guarded: a spec is put only by a transaction that finds it
    absent, so a writer that still counts on a spec this deletes has not seen the deletion, and its
    next transaction is refused by the head compare; it checks again once it has seen it, and puts
    the spec again. Deleting at load instead, unguarded, could remove a spec that another manager's
    transaction in flight names."""
    pieces = []
    for spec in unused:
        key = layout.spec(spec)
        pieces.append(Piece(key, None, etcd.delete(key), 2 * len(key) + PER_KEY))
    await writer.send_each(pieces)
