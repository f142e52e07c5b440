"""Plans for the cluster settings: one object named "default", created with defaults on first change."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec
from msgspec import UNSET

from treeherd.core.puppet.puppet import cluster_puppet_changes
from treeherd.core.tree.nodes import check_version
from treeherd.core.view import View
from treeherd.model.errors import InvalidInput
from treeherd.model.ops import Create, Op, Update
from treeherd.model.requests import ClusterUpdate
from treeherd.model.services import ClusterSettings

# field -> (lowest, highest) allowed
_BOUNDS: dict[str, tuple[float, float]] = {
    "heartbeat_period_s": (0.05, 3600),
    "heartbeat_epsilon_s": (0, 60),
    "heartbeat_grace_multiplier": (1, 100),
    "status_batch_interval_s": (0.001, 10),
    "status_batch_max": (1, 1_000_000),
    "task_history": (1, 1000),
    "registration_limit": (1, 1000),
    "registration_window_s": (0.1, 3600),
    "node_loss_fraction": (0, 1),
    "node_loss_hold_s": (0, 86400),
    "endpoint_ttl_s": (1, 86400),
    "drain_delay_s": (0, 3600),
}


def current_settings(view: View, now: datetime) -> ClusterSettings:
    """The stored settings, or the defaults."""
    found = view.lookup(ClusterSettings, "name", "default")
    return found or ClusterSettings(id="cluster-default", created_at=now, updated_at=now)


def plan_update_cluster(
    view: View, request: ClusterUpdate, now: datetime, new_id: Callable[[], str]
) -> list[Op]:
    stored = view.lookup(ClusterSettings, "name", "default")
    settings = stored or ClusterSettings(id=new_id(), created_at=now, updated_at=now)
    if stored is not None:
        check_version(stored, request.version)
    changes: dict[str, object] = {"updated_at": now}
    for field, (low, high) in _BOUNDS.items():
        value = getattr(request, field)
        if value is UNSET:
            continue
        if not low <= value <= high:
            raise InvalidInput(f"{field} must be between {low:g} and {high:g}, not {value}", field=field)
        changes[field] = value
    changes.update(cluster_puppet_changes(view, request))
    updated = msgspec.structs.replace(settings, **changes)
    return [Update(updated) if stored is not None else Create(updated)]
