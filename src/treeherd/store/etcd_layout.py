"""How the etcd store lays a cluster out in etcd's keys, and how one transaction becomes etcd transactions.

Under the prefix (default `/treeherd`):
- `PREFIX/meta`: the marker, JSON `{"schema": 1, "cluster": ID}`, written once when the prefix is taken;
  a manager refuses a prefix whose marker names another cluster or schema, or that holds keys without one;
- `PREFIX/head`: rewritten by every transaction, which also compares its `mod_revision` with the last one
  the writer saw: a transaction lands only on the exact state it was checked against (unique keys,
  references and invariants are checked in memory, so this is what makes those checks hold in etcd);
  its value is `partial` while a split commit is being written (see `plan_chunks`), empty otherwise;
- `PREFIX/o/KIND/ID`: each object, MessagePack as `codec` encodes it; its version is the key's
  `mod_revision` (the stored bytes carry version 0);
- `PREFIX/election/LEASE`: each manager's candidacy for leadership, bound to its lease (`etcd_election`);
- `PREFIX/secrets/ca`: the cluster CA's certificate and key and the join secrets, shared by the managers
  (`etcd_secrets`); not an object: never in the event stream, a snapshot or a migration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

from treeherd.model.errors import Refused
from treeherd.model.events import Event
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Create, Op
from treeherd.store import etcd_client as etcd
from treeherd.store.codec import decode, encode

SCHEMA_VERSION = 1
PARTIAL = b"partial"
# etcd's defaults (--max-txn-ops, --max-request-bytes); `?max-txn-ops=` in the store URL when raised.
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
_MARGIN = 16_384  # bytes left for the request's framing, the head key and the compares' headers
_PER_KEY = 48  # protobuf overhead of one compare and one write, roughly


class Layout:
    """The keys of one cluster under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.root = self.prefix + b"/"
        self.meta = self.prefix + b"/meta"
        self.head = self.prefix + b"/head"
        self._objects = self.prefix + b"/o/"
        self.election = self.prefix + b"/election/"
        self.secrets = self.prefix + b"/secrets/ca"

    def key(self, kind: str, id: str) -> bytes:
        return self._objects + kind.encode() + b"/" + id.encode()

    def parse(self, key: bytes) -> tuple[str, str] | None:
        """(kind, id) of an object key; None for the marker, the head or a key treeherd does not own."""
        if not key.startswith(self._objects):
            return None
        kind, sep, id = key[len(self._objects) :].partition(b"/")
        return (kind.decode(), id.decode()) if sep else None


def marker(cluster: str) -> bytes:
    return json.dumps({"schema": SCHEMA_VERSION, "cluster": cluster}).encode()


def read_marker(prefix: str, value: bytes) -> str:
    """The cluster id in a marker; `Refused` for a marker this treeherd does not read."""
    try:
        data = json.loads(value)
        schema, cluster = data["schema"], data["cluster"]
    except (ValueError, KeyError, TypeError):
        raise Refused(
            f"the etcd key {prefix}/meta is not a treeherd marker: this prefix holds other data;"
            " choose another one with ?prefix= in --store"
        ) from None
    if schema != SCHEMA_VERSION:
        raise Refused(
            f"the data under {prefix} has store schema {schema}, this treeherd reads schema {SCHEMA_VERSION}:"
            " run a treeherd that matches it, or migrate the data"
        )
    return str(cluster)


def decode_at(value: bytes, mod_revision: int) -> AnyObject:
    """The object stored as `value`, with its version: the key's `mod_revision`."""
    return msgspec.structs.replace(decode(value), version=mod_revision)


def encode_stored(obj: AnyObject) -> bytes:
    return encode(msgspec.structs.replace(obj, version=0))


@dataclass
class Piece:
    """What one object key contributes to a transaction: a compare, a write (or none), their size."""

    key: bytes
    compare: Any
    write: Any | None
    size: int
    stored: tuple[bytes, AnyObject] | None = None  # a put's value and the object it encodes


@dataclass
class Chunk:
    """One etcd transaction of a commit."""

    pieces: list[Piece] = field(default_factory=list)
    size: int = 0


def plan_pieces(layout: Layout, ops: list[Op], events: list[Event]) -> list[Piece]:
    """The compares and writes of one checked transaction: each key compared once, against the version
    the caller based it on (absent for a create), and written once, with its final state."""
    compares: dict[bytes, Any] = {}
    for op in ops:
        obj = op.object
        key = layout.key(obj.kind, obj.id)
        if key not in compares:
            compares[key] = (
                etcd.compare(key, "create", 0)
                if isinstance(op, Create)
                else etcd.compare(key, "mod", obj.version)
            )
    final: dict[bytes, AnyObject | None] = {}
    for event in events:
        obj = event.object
        final[layout.key(obj.kind, obj.id)] = None if event.type == "deleted" else obj
    pieces = []
    for key, check in compares.items():
        if key not in final:  # an Assert: compared, not written
            pieces.append(Piece(key, check, None, len(key) + _PER_KEY))
            continue
        stored = final[key]
        if stored is None:
            pieces.append(Piece(key, check, etcd.delete(key), 2 * len(key) + _PER_KEY))
        else:
            value = encode_stored(stored)
            size = 2 * len(key) + len(value) + _PER_KEY
            pieces.append(Piece(key, check, etcd.put(key, value), size, (value, stored)))
    return pieces


def plan_chunks(pieces: list[Piece], *, max_ops: int, max_bytes: int, reserved: int = 1) -> list[Chunk]:
    """Pack pieces, in order, into etcd transactions of at most `max_ops` compares and writes and
    `max_bytes` bytes, keeping `reserved` of each for the head key (and, later, a leader fence).

    A commit that needs more than one is written chunk by chunk, each chunk guarded by the head key, the
    head marked `partial` until the last: the store's readers apply the chunks together, as one change,
    so a split commit stays all-or-nothing for every treeherd view and watch. What a split commit gives
    up is atomicity inside etcd itself: a reader of the raw keys (etcdctl) may see a commit in part, and a
    writer that dies between chunks leaves the chunks written so far (the next commit closes them)."""
    limit = max_ops - reserved
    budget = max_bytes - _MARGIN
    chunks = [Chunk()]
    for piece in pieces:
        if piece.size > budget:
            raise Refused(
                f"an object of {piece.size} bytes ({piece.key.decode(errors='replace')}) does not fit in one"
                f" etcd request (--max-request-bytes {max_bytes}): raise etcd's limit and ?max-request-bytes="
            )
        chunk = chunks[-1]
        if len(chunk.pieces) >= limit or chunk.size + piece.size > budget:
            chunk = Chunk()
            chunks.append(chunk)
        chunk.pieces.append(piece)
        chunk.size += piece.size
    return chunks
