"""How the etcd store lays a cluster out in etcd's keys, and how one transaction becomes etcd transactions.

Under the prefix (default `/treeherd`):
- `PREFIX/meta`: the marker, JSON `{"schema": 2, "cluster": ID}`, written when the prefix is taken;
  a manager refuses a prefix whose marker names another cluster or schema, or that holds keys without one;
  `"upgrading": true` in it while a prefix of schema 1 is being rewritten (see `etcd_prefix.upgrade`);
- `PREFIX/head`: rewritten by every transaction, which also compares its `mod_revision` with the last one
  the writer saw: a transaction lands only on the exact state it was checked against (unique keys,
  references and invariants are checked in memory, so this is what makes those checks hold in etcd);
  its value is `partial` while a split commit is being written (see `plan_chunks`), empty otherwise;
- `PREFIX/o/KIND/ID`: each object, MessagePack as `codec` encodes it; its version is the key's
  `mod_revision` (the stored bytes carry version 0). A task is stored without its spec: its value is
  one marker byte, the 16-byte key of its spec and the rest of the task (`etcd_specs`);
- `PREFIX/spec/HEX`: each task spec once (MessagePack), named by the hex of its key, a hash of its
  bytes; put in the same etcd transaction as the first task that names it, or an earlier one, and
  deleted once no task names it (`etcd_prefix.collect`); not an object: never in the event stream;
- `PREFIX/election/LEASE`: each manager's candidacy for leadership, bound to its lease (`etcd_election`);
- `PREFIX/secrets/ca`: the cluster CA's certificate and key and the join secrets, shared by the managers
  (`etcd_secrets`); not an object: never in the event stream, a snapshot or a migration.

Schema 1 stored each task whole, spec included, in its object key; this treeherd reads those values too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from treeherd.model.errors import Refused
from treeherd.model.events import Event
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Create, Op
from treeherd.model.services import Task
from treeherd.store import etcd_client as etcd
from treeherd.store.codec import encode
from treeherd.store.etcd_specs import Specs, encode_task

SCHEMA_VERSION = 2
UPGRADABLE = (1,)  # schemas a manager of this treeherd rewrites as SCHEMA_VERSION (`etcd_prefix.upgrade`)
PARTIAL = b"partial"
# etcd's defaults (--max-txn-ops, --max-request-bytes); `?max-txn-ops=` in the store URL when raised.
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
_MARGIN = 16_384  # bytes left for the request's framing, the head key and the compares' headers
PER_KEY = 48  # protobuf overhead of one compare and one write, roughly


class Layout:
    """The keys of one cluster under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self.root = self.prefix + b"/"
        self.meta = self.prefix + b"/meta"
        self.head = self.prefix + b"/head"
        self._objects = self.prefix + b"/o/"
        self._specs = self.prefix + b"/spec/"
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

    def spec(self, key: bytes) -> bytes:
        """The etcd key of the spec whose key is `key`."""
        return self._specs + key.hex().encode()

    def parse_spec(self, key: bytes) -> bytes | None:
        """The spec key an etcd key holds; None for any other key."""
        if not key.startswith(self._specs):
            return None
        try:
            return bytes.fromhex(key[len(self._specs) :].decode())
        except ValueError:
            return None


def marker(cluster: str, *, upgrading: bool = False) -> bytes:
    data: dict[str, Any] = {"schema": SCHEMA_VERSION, "cluster": cluster}
    if upgrading:
        data["upgrading"] = True
    return json.dumps(data).encode()


class Marker(NamedTuple):
    cluster: str
    upgrade: bool  # the prefix holds tasks in an older schema's form: rewrite them before writing


def read_marker(prefix: str, value: bytes) -> Marker:
    """What a marker says; `Refused` for a marker this treeherd does not read."""
    try:
        data = json.loads(value)
        schema, cluster = data["schema"], data["cluster"]
    except (ValueError, KeyError, TypeError):
        raise Refused(
            f"the etcd key {prefix}/meta is not a treeherd marker: this prefix holds other data;"
            " choose another one with ?prefix= in --store"
        ) from None
    if schema != SCHEMA_VERSION and schema not in UPGRADABLE:
        raise Refused(
            f"the data under {prefix} has store schema {schema}, this treeherd reads schema {SCHEMA_VERSION}:"
            " run a treeherd that matches it, or copy the cluster into an empty prefix with a treeherd"
            " that reads it (treeherd store migrate)"
        )
    return Marker(str(cluster), schema != SCHEMA_VERSION or data.get("upgrading") is True)


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
    spec: bytes | None = None  # the key of the spec a spec's put writes


@dataclass
class Chunk:
    """One etcd transaction of a commit."""

    pieces: list[Piece] = field(default_factory=list)
    size: int = 0


def plan_pieces(layout: Layout, ops: list[Op], events: list[Event], specs: Specs) -> list[Piece]:
    """The compares and writes of one checked transaction: each key compared once, against the version
    the caller based it on (absent for a create), and written once, with its final state. A task's spec
    that etcd does not hold yet is put just before the first task that names it (so in the same etcd
    transaction or an earlier one when the commit is split), without a compare: its key is its content."""
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
    planned: set[bytes] = set()
    for key, check in compares.items():
        if key not in final:  # an Assert: compared, not written
            pieces.append(Piece(key, check, None, len(key) + PER_KEY))
            continue
        stored = final[key]
        if stored is None:
            pieces.append(Piece(key, check, etcd.delete(key), 2 * len(key) + PER_KEY))
            continue
        if type(stored) is Task:
            spec, spec_value = specs.keys.key(stored)
            if spec not in planned and not specs.held(spec):
                planned.add(spec)
                spec_at = layout.spec(spec)
                size = 2 * len(spec_at) + len(spec_value) + PER_KEY
                pieces.append(Piece(spec_at, None, etcd.put(spec_at, spec_value), size, spec=spec))
            value = encode_task(stored, spec)
        else:
            value = encode_stored(stored)
        size = 2 * len(key) + len(value) + PER_KEY
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
