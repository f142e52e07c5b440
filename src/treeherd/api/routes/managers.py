"""/api/v1/managers: the cluster's managers, each with its address, whether it leads, the store revision
it has applied and how far it is behind (one manager on its own store: itself, the leader)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Controller, get

from treeherd.model.managers import ManagerView

ManagerListing = Callable[[], Awaitable[list[ManagerView]]]


class ManagerController(Controller):
    path = "/api/v1/managers"
    tags = ["managers"]

    @get("/", summary="The cluster's managers: address, leader or follower, revision applied, lag")
    async def list_managers(self, managers: ManagerListing) -> list[ManagerView]:
        return await managers()
