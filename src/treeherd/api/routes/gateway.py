"""/api/v1/gateway/snapshot, /api/v1/gateways, /api/v1/backends and /api/v1/policies: what the edge
gateway renders from, what it did, backend pins and ejections, and health policies."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put

from treeherd.core.edge import gateway_plans as plans
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import NotFound
from treeherd.model.gateway import BackendState, GatewayRecord, HealthPolicy
from treeherd.model.gateway_requests import BackendUpdate, GatewayEventIn, PolicySet
from treeherd.model.objects import AnyObject
from treeherd.model.routing import RoutingSnapshot


class GatewayController(Controller):
    path = "/api/v1"
    tags = ["gateway"]

    @get("/gateway/snapshot", summary="Every object the edge configuration depends on, at one revision")
    async def snapshot(self, inventory: Inventory) -> RoutingSnapshot:
        return plans.routing_snapshot(inventory.view)

    @get("/gateways", summary="Gateways and their recent events")
    async def list_gateways(self, inventory: Inventory) -> list[GatewayRecord]:
        return sorted(inventory.view.all(GatewayRecord), key=lambda g: g.name)

    @get("/gateways/{name:str}", summary="One gateway and its recent events")
    async def get_gateway(self, inventory: Inventory, name: str) -> GatewayRecord:
        record = inventory.view.lookup(GatewayRecord, "name", name)
        if record is None:
            raise NotFound(f"no gateway {name!r} has reported yet (start one with: treeherd gateway run)")
        return record

    @post("/gateways/{name:str}/events", summary="Record what a gateway did (render, reload, rollback, ...)")
    async def record_event(self, inventory: Inventory, name: str, data: GatewayEventIn) -> AnyObject:
        committed = await inventory.apply(
            lambda v: plans.plan_record_event(v, name, data, inventory.clock(), inventory.ids)
        )
        return committed.objects[0]

    @get("/backends", summary="Backend pins and ejections")
    async def list_backends(self, inventory: Inventory) -> list[BackendState]:
        return sorted(inventory.view.all(BackendState), key=lambda b: b.id)

    @put(
        "/backends/{path:str}/{hostname:str}",
        summary="Pin a backend in or out, or record its ejection",
        status_code=200,
    )
    async def set_backend(
        self, inventory: Inventory, path: str, hostname: str, data: BackendUpdate
    ) -> AnyObject:
        committed = await inventory.apply(
            lambda v: plans.plan_set_backend(v, path, hostname, data, inventory.clock(), inventory.ids)
        )
        return committed.objects[0]

    @get("/policies", summary="Health policies (alert and ejection rules) of nodes")
    async def list_policies(self, inventory: Inventory) -> list[HealthPolicy]:
        return plans.policies(inventory.view)

    @put(
        "/policies/{path:str}",
        summary="Set a node's health policy (inherited by its subtree)",
        status_code=200,
    )
    async def set_policy(self, inventory: Inventory, path: str, data: PolicySet) -> AnyObject:
        committed = await inventory.apply(
            lambda v: plans.plan_set_policy(v, path, data, inventory.clock(), inventory.ids)
        )
        return committed.objects[0]

    @delete("/policies/{path:str}", summary="Remove a node's own health policy")
    async def delete_policy(self, inventory: Inventory, path: str) -> None:
        await inventory.apply(lambda v: plans.plan_delete_policy(v, path))
