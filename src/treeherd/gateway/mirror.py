"""The gateway's copy of the routing objects: a snapshot from the manager kept current by the event
stream, so a re-render needs no round trip.

Events are applied by version: an event older than what the mirror holds (the snapshot may already
include changes the stream replays) changes nothing, so snapshot + stream from the snapshot's revision
converge on the store's state.
"""

from __future__ import annotations

from treeherd.model.base import Object
from treeherd.model.events import Event
from treeherd.model.routing import RoutingSnapshot

# The kinds a rendered configuration or a health decision depends on, and their snapshot fields.
ROUTING_KINDS = {
    "node": "nodes",
    "machine": "machines",
    "binding": "bindings",
    "domain": "domains",
    "backend": "backends",
    "policy": "policies",
    "service": "services",
    "endpoint": "endpoints",
}


class SnapshotMirror:
    """Objects by kind and id, as of `revision`."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.revision = snapshot.revision
        self._objects: dict[str, dict[str, Object]] = {
            kind: {obj.id: obj for obj in getattr(snapshot, field)} for kind, field in ROUTING_KINDS.items()
        }
        self._deleted: dict[str, int] = {}
        self._cached: RoutingSnapshot | None = snapshot

    def apply(self, event: Event) -> bool:
        """Take one event; True when it changed a routing object."""
        self.revision = max(self.revision, event.revision)
        obj = event.object
        table = self._objects.get(obj.kind)
        if table is None:
            return False
        held = table.get(obj.id)
        if event.type == "deleted":
            if held is None or held.version > obj.version:
                return False
            del table[obj.id]
            self._deleted[obj.id] = event.revision
        else:
            if (held is not None and held.version >= obj.version) or self._deleted.get(
                obj.id, -1
            ) >= obj.version:
                return False
            table[obj.id] = obj
        self._cached = None
        return True

    def snapshot(self) -> RoutingSnapshot:
        if self._cached is None:
            fields = {
                field: sorted(self._objects[kind].values(), key=lambda o: o.id)
                for kind, field in ROUTING_KINDS.items()
            }
            self._cached = RoutingSnapshot(revision=self.revision, **fields)  # type: ignore[arg-type]
        return self._cached
