"""Writing one checked transaction to etcd: its chunks as guarded etcd transactions, in order.

Every etcd transaction compares the head key with the revision this writer last wrote or saw (and,
with a fence set, a leader key's create revision: a manager that lost its leadership then cannot
write, however late its request arrives), compares each key with the version the caller based it on,
and rewrites the head (`partial` until the last chunk of a split commit). On a refusal the failure
branch reads the head and the fence key back, to tell which guard failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from treeherd.model.errors import TreeherdError, Unavailable, VersionConflict
from treeherd.model.events import Event
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Op
from treeherd.store import etcd_client as etcd
from treeherd.store.etcd_client import EtcdClient, EtcdUrl
from treeherd.store.etcd_layout import PARTIAL, Layout, Piece, plan_chunks, plan_pieces
from treeherd.store.etcd_specs import Specs


class Moved(Exception):
    """Another writer changed the prefix since this one last wrote: check again on the new state."""

    def __init__(self, head: int) -> None:
        super().__init__(head)
        self.head = head


class Fenced(Unavailable):
    """The fence key is gone or was created again: this manager no longer holds what it fenced on."""


class Writer:
    """The etcd side of an `EtcdStore`'s commits."""

    def __init__(self, client: EtcdClient, layout: Layout, url: EtcdUrl, specs: Specs) -> None:
        self._client = client
        self._layout = layout
        self._url = url
        self.specs = specs
        self.head = 0  # the head key's mod_revision as this writer last wrote or read it
        self.partial_open = False  # part of a split commit was written and not closed
        self.fence: tuple[bytes, int] | None = None
        # What this writer is putting, by key: the feed takes the object back instead of decoding it.
        self.own: dict[bytes, tuple[bytes, AnyObject]] = {}

    def _guards(self) -> tuple[list[Any], list[Any]]:
        """The compares every transaction carries, and the reads of its failure branch."""
        head = self._layout.head
        compares = [etcd.compare(head, "mod", self.head)]
        reads = [etcd.get(head)]
        if self.fence is not None:
            compares.append(etcd.compare(self.fence[0], "create", self.fence[1]))
            reads.append(etcd.get(self.fence[0]))
        return compares, reads

    def _refusal(self, response: Any) -> TreeherdError | Moved:
        """Why etcd refused a transaction: the fence, another writer, or an object changed behind us."""
        if self.fence is not None:
            kvs = response.responses[1].response_range.kvs
            if not kvs or kvs[0].create_revision != self.fence[1]:
                return Fenced(
                    f"the write was refused: {self.fence[0].decode(errors='replace')} is no longer the key"
                    " this manager fenced its writes on (it is no longer the leader)"
                )
        kvs = response.responses[0].response_range.kvs
        head = kvs[0].mod_revision if kvs else 0
        if head != self.head:
            return Moved(head)
        return VersionConflict(
            "an object changed in etcd without going through treeherd (its version differs from what the"
            " store read): read it again and retry",
            field="version",
        )

    async def send(self, ops: list[Op], events: list[Event]) -> dict[bytes, int]:
        """Write one checked transaction; the revision each key was written at. Raises `Moved` when
        another writer got in before anything was written."""
        layout = self._layout
        reserved = 1 if self.fence is None else 2
        chunks = plan_chunks(
            plan_pieces(layout, ops, events, self.specs),
            max_ops=self._url.max_txn_ops,
            max_bytes=self._url.max_request_bytes,
            reserved=reserved,
        )
        written: dict[bytes, int] = {}
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            compares, reads = self._guards()
            writes = [etcd.put(layout.head, b"" if index == last else PARTIAL)]
            self._add(chunk.pieces, compares, writes)
            try:
                response = await self._client.txn(compares, writes, reads)
            except TreeherdError as error:
                self._forget(chunk.pieces)
                if index:
                    raise _partly(error, index, len(chunks)) from None
                raise
            if not response.succeeded:
                self._forget(chunk.pieces)
                refusal = self._refusal(response)
                if index:
                    detail = (
                        "another writer changed the store" if isinstance(refusal, Moved) else str(refusal)
                    )
                    raise _partly(Unavailable(detail), index, len(chunks))
                raise refusal
            self._wrote(chunk.pieces, response.header.revision)
            self.partial_open = index != last
            for piece in chunk.pieces:
                written[piece.key] = self.head
        if not written:
            written[layout.head] = self.head
        return written

    async def send_each(self, pieces: list[Piece], last: Sequence[Any] = ()) -> None:
        """Write `pieces` as commits of their own, one etcd transaction each within etcd's limits (an
        upgrade's rewrites, a collection of unused specs), each one whole in etcd; the `last` writes go
        with the last one. Raises `Moved` when another writer got in: what was written stays."""
        reserved = (1 if self.fence is None else 2) + len(last)
        chunks = plan_chunks(
            pieces, max_ops=self._url.max_txn_ops, max_bytes=self._url.max_request_bytes, reserved=reserved
        )
        for index, chunk in enumerate(chunks):
            compares, reads = self._guards()
            writes = [etcd.put(self._layout.head, b"")]
            if index == len(chunks) - 1:
                writes.extend(last)
            self._add(chunk.pieces, compares, writes)
            try:
                response = await self._client.txn(compares, writes, reads)
            except TreeherdError:
                self._forget(chunk.pieces)
                raise
            if not response.succeeded:
                self._forget(chunk.pieces)
                raise self._refusal(response)
            self._wrote(chunk.pieces, response.header.revision)

    def _add(self, pieces: list[Piece], compares: list[Any], writes: list[Any]) -> None:
        """Add the compares and writes of `pieces` to a transaction (its writes before the head's)."""
        compares.extend(piece.compare for piece in pieces if piece.compare is not None)
        writes[:0] = [piece.write for piece in pieces if piece.write is not None]
        for piece in pieces:
            if piece.stored is not None:
                self.own[piece.key] = piece.stored

    def _wrote(self, pieces: list[Piece], revision: int) -> None:
        self.head = revision
        self.specs.wrote([piece.spec for piece in pieces if piece.spec is not None], revision)

    def _forget(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self.own.pop(piece.key, None)

    def take_own(self, key: bytes, value: bytes, mod_revision: int) -> AnyObject | None:
        """The object this writer put as `value` at `key`, stamped with its version; None if it is not ours."""
        mine = self.own.pop(key, None)
        if mine is None or mine[0] != value:
            return None
        return msgspec.structs.replace(mine[1], version=mod_revision)

    async def close_partial(self) -> int:
        """End a split commit left open (its writer failed between chunks): the chunks written so far
        become one change for every reader. Returns the head's revision after."""
        compares, reads = self._guards()
        response = await self._client.txn(compares, [etcd.put(self._layout.head, b"")], reads)
        if response.succeeded:
            self.head = response.header.revision
        else:
            refusal = self._refusal(response)
            if isinstance(refusal, Fenced):
                raise refusal
            kvs = response.responses[0].response_range.kvs
            self.head = kvs[0].mod_revision if kvs else 0
        self.partial_open = False
        return self.head


def _partly(error: TreeherdError, index: int, total: int) -> Unavailable:
    return Unavailable(
        f"{error}; this commit was split into {total} etcd transactions and the first {index} were written:"
        " they stay in etcd, and the store applies them with its next commit"
    )
