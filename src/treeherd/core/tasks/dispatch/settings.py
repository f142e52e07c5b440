"""The cluster settings the dispatcher's decisions read (heartbeat period, grace, registration limits):
the stored ones, or the defaults when none are stored."""

from __future__ import annotations

from datetime import UTC, datetime

from treeherd.core.view import View
from treeherd.model.services import ClusterSettings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cluster_settings(view: View) -> ClusterSettings:
    """The stored cluster settings, or the defaults when none are stored."""
    stored = view.lookup(ClusterSettings, "name", "default")
    return stored or ClusterSettings(id="default", created_at=_EPOCH, updated_at=_EPOCH)
