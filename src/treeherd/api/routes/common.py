"""Helpers the route modules share: paging and deletion summaries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from treeherd.model.errors import InvalidInput
from treeherd.model.objects import AnyObject
from treeherd.model.views import Deleted

T = TypeVar("T")
MAX_PAGE = 100_000


def page(items: Sequence[T], key: Callable[[T], str], *, limit: int | None, after: str | None) -> list[T]:
    """Items sorted by `key`, strictly after `after`, at most `limit` of them."""
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    start = 0
    if after is not None:
        # items are sorted by key: find the first one past the cursor
        low, high = 0, len(items)
        while low < high:
            mid = (low + high) // 2
            if key(items[mid]) <= after:
                low = mid + 1
            else:
                high = mid
        start = low
    end = len(items) if limit is None else start + limit
    return list(items[start:end])


def deleted(objects: Sequence[AnyObject]) -> Deleted:
    counts: dict[str, int] = {}
    for obj in objects:
        counts[obj.kind] = counts.get(obj.kind, 0) + 1
    return Deleted(deleted=counts)
