"""/api/v1/cluster: the cluster-wide settings (heartbeats, status batching, task history...)."""

from __future__ import annotations

from litestar import Controller, get, patch

from treeherd.core.cluster import current_settings, plan_update_cluster
from treeherd.manager.inventory import Inventory
from treeherd.model.requests import ClusterUpdate
from treeherd.model.services import ClusterSettings


class ClusterController(Controller):
    path = "/api/v1/cluster"
    tags = ["cluster"]

    @get("/", summary="The cluster settings (defaults until first changed)")
    async def get_settings(self, inventory: Inventory) -> ClusterSettings:
        return current_settings(inventory.view, inventory.clock())

    @patch("/", summary="Change cluster settings")
    async def update_settings(self, inventory: Inventory, data: ClusterUpdate) -> ClusterSettings:
        committed = await inventory.apply(
            lambda v: plan_update_cluster(v, data, inventory.clock(), inventory.ids),
            pinned=data.version is not None,
        )
        settings = committed.objects[0]
        assert isinstance(settings, ClusterSettings)
        return settings
