"""Write operations: what a plan asks the store to do, applied all-or-nothing in one transaction.

Each operation carries the object it concerns. For `Update`, `Delete` and `Assert` the object's
`version` is the version the plan was based on: the store refuses the transaction when the stored
object has moved on (an etcd `mod_revision` compare). The store stamps written objects with the
transaction's revision as their new version.
"""

from __future__ import annotations

import msgspec

from treeherd.model.objects import AnyObject


# `gc=False`: an operation is not tracked by Python's cycle collector. Nothing refers back to an
# operation, so it is never part of a cycle; a chunk of 25,000 of them outlives the young collections
# of its commit, and what reaches the oldest generation sets off full collections over every object
# of the manager.
class Create(msgspec.Struct, frozen=True, gc=False):
    """Store a new object; its id and unique keys must be free."""

    object: AnyObject


class Update(msgspec.Struct, frozen=True, gc=False):
    """Replace an object whose stored version equals `object.version`."""

    object: AnyObject


class Delete(msgspec.Struct, frozen=True, gc=False):
    """Remove an object whose stored version equals `object.version` and which nothing references."""

    object: AnyObject


class Assert(msgspec.Struct, frozen=True, gc=False):
    """Write nothing, but fail the transaction unless the object is still at `object.version`."""

    object: AnyObject


Op = Create | Update | Delete | Assert
