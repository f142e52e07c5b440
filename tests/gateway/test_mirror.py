"""The gateway's mirror: snapshot plus events, applied by version."""

from __future__ import annotations

import msgspec

from treeherd.gateway.mirror import SnapshotMirror
from treeherd.model.events import Event
from treeherd.model.routing import RoutingSnapshot
from treeherd.testing import factories as f


def test_events_apply_by_version_and_replays_change_nothing() -> None:
    node = msgspec.structs.replace(f.node("a", id="n1"), version=5)
    mirror = SnapshotMirror(RoutingSnapshot(revision=5, nodes=[node]))
    assert not mirror.apply(Event(revision=5, type="updated", object=node))  # already in the snapshot
    newer = msgspec.structs.replace(node, version=7, port=80)
    assert mirror.apply(Event(revision=7, type="updated", object=newer))
    assert mirror.snapshot().nodes == [newer] and mirror.revision == 7
    assert mirror.apply(Event(revision=8, type="deleted", object=newer))
    assert mirror.snapshot().nodes == []
    assert not mirror.apply(Event(revision=7, type="updated", object=newer))  # a late replay
    task_like = msgspec.structs.replace(f.machine("m", id="m1"), version=9)
    assert mirror.apply(Event(revision=9, type="created", object=task_like))
