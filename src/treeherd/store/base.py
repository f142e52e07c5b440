"""The store protocol every backend implements, and the records it hands back.

Callers depend on this protocol only, so a backend can change without changing them:
- `view()` is the committed state, read synchronously (see `core.view.View`);
- `commit(ops)` applies one transaction all-or-nothing with version checks and returns its revision and
  the stored objects; concurrent commits are grouped into one durable write (group commit);
- `watch(since)` yields every `Change` after revision `since` (or from now), then the live stream.
An etcd backend fits the same shape: revision = etcd revision, versions = `mod_revision` compares, the
working set kept in memory by its own watch; leases for TTL keys arrive with the objects that need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from treeherd.core.view import View
from treeherd.model.events import Change
from treeherd.model.objects import AnyObject
from treeherd.model.ops import Op


class Committed(msgspec.Struct, frozen=True):
    """A committed transaction: its revision and each written object as stored (deleted ones as they were)."""

    revision: int
    objects: list[AnyObject]


class Watch(Protocol):
    """A stream of changes; close it when done."""

    def __aiter__(self) -> Watch: ...

    async def __anext__(self) -> Change:
        """The next change; cancelling the wait loses nothing."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    """A durable, versioned, watchable object store."""

    @property
    def revision(self) -> int: ...

    def view(self) -> View: ...

    async def open(self) -> None:
        """Load what was stored; must be called before anything else."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release resources."""
        ...

    async def commit(self, ops: Sequence[Op]) -> Committed: ...

    def history(self, since: int = 0) -> list[Change]:
        """The retained changes after revision `since`, oldest first (for stories and audits)."""
        ...

    def watch(self, since: int | None = None) -> Watch:
        """Changes after revision `since` (None: from now). Raises `Compacted` when `since` is too old."""
        ...
