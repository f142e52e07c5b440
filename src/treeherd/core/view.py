"""The read-only view of the store that decisions are made against.

Reads are synchronous: every backend keeps its working set in memory (as SwarmKit keeps memdb over raft),
so a decision reads a consistent state as long as it does not yield to the event loop while reading.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from treeherd.model.base import Object

T = TypeVar("T", bound=Object)


class View(Protocol):
    """What a decision may read.

    Besides `get` by id, reads go through the indexes each kind declares in `model/kinds.py`, each in
    time proportional to what it returns, not to the kind's size:
    - `lookup`: the one object holding a key of a unique index (a machine by hostname);
    - `where`: the objects filed under a key of a non-unique index (a service's endpoints);
    - `referrers`: the objects whose reference names a target (a node's bindings);
    - `tally`: how many objects a tally counts under a key (a service's running tasks), in constant time.
    `all` is a scan: use it when every object is wanted, not to filter by a field.
    """

    @property
    def revision(self) -> int:
        """The revision of the last committed transaction."""
        ...

    def get(self, cls: type[T], id: str) -> T | None:
        """The object of that kind with that id, or None."""
        ...

    def lookup(self, cls: type[T], index: str, key: str) -> T | None:
        """The object holding `key` in the unique index `index` of its kind, or None."""
        ...

    def where(self, cls: type[T], index: str, key: str) -> list[T]:
        """Objects of kind `cls` filed under `key` in the index `index` of their kind, in no particular
        order (empty when none is)."""
        ...

    def referrers(self, cls: type[T], reference: str, target_id: str) -> list[T]:
        """Objects of kind `cls` whose reference `reference` names `target_id`."""
        ...

    def referrer_ids(self, cls: type[Object], reference: str, target_id: str) -> list[str]:
        """The ids of `referrers`, in the same order: for a reader that takes the objects a few at a
        time (a million objects in one list hold the caller for half a second, their ids a few
        hundredths)."""
        ...

    def tally(self, cls: type[Object], name: str, key: str) -> int:
        """How many objects of kind `cls` are counted under `key` by the tally `name` of their kind."""
        ...

    def all(self, cls: type[T]) -> Iterable[T]:
        """Every object of that kind, in no particular order."""
        ...

    def count(self, cls: type[Object]) -> int:
        """How many objects of that kind exist."""
        ...
