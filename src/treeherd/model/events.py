"""Watch events: what changed, at which store revision.

A `Change` is one committed transaction: all its events share its revision, so a watcher that has
processed a `Change` can resume from `change.revision` and miss nothing (the commit marker).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from treeherd.model.objects import AnyObject

EventType = Literal["created", "updated", "deleted"]


# Not tracked by the cycle collector (see `model.services.TaskStatus`): the store keeps 100,000 of them.
class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One object created, updated or deleted; for a deletion `object` is its last state."""

    revision: int
    type: EventType
    object: AnyObject


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """The events of one committed transaction."""

    revision: int
    events: list[Event]
