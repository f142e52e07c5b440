"""/api/v1/machines and /api/v1/bindings: the inventory of hosts and where they are bound."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import Parameter

from treeherd.api.routes.common import deleted, page
from treeherd.manager.inventory import Inventory
from treeherd.model.objects import AnyObject, Machine
from treeherd.model.requests import BindRequest, MachineCreate, MachineUpdate
from treeherd.model.views import BindingView, Deleted


class MachineController(Controller):
    path = "/api/v1/machines"
    tags = ["machines"]

    @get("/", summary="List machines, sorted by hostname")
    async def list_machines(
        self,
        inventory: Inventory,
        node: str | None = Parameter(default=None, description="only machines bound to this node path"),
        agents: bool = Parameter(
            default=False, description="only machines that run an agent (cluster nodes)"
        ),
        limit: int | None = None,
        after: str | None = Parameter(
            default=None, description="paging cursor: the last hostname already seen"
        ),
    ) -> list[Machine]:
        machines = inventory.machines(node=node)
        if agents:
            machines = [m for m in machines if m.agent is not None]
        return page(machines, lambda m: m.hostname, limit=limit, after=after)

    @post("/", summary="Add a machine to the inventory")
    async def create_machine(self, inventory: Inventory, data: MachineCreate) -> AnyObject:
        return await inventory.create_machine(data)

    @get("/{hostname:str}", summary="One machine")
    async def get_machine(self, inventory: Inventory, hostname: str) -> Machine:
        return inventory.machine(hostname)

    @patch("/{hostname:str}", summary="Change a machine (labels merge; null clears)")
    async def update_machine(self, inventory: Inventory, hostname: str, data: MachineUpdate) -> AnyObject:
        return await inventory.update_machine(hostname, data)

    @delete("/{hostname:str}", summary="Remove a machine (with force: and its bindings)", status_code=200)
    async def delete_machine(
        self, inventory: Inventory, hostname: str, force: bool = False, version: int | None = None
    ) -> Deleted:
        return deleted(await inventory.delete_machine(hostname, force=force, version=version))

    @get("/{hostname:str}/bindings", summary="The nodes a machine is bound to")
    async def machine_bindings(self, inventory: Inventory, hostname: str) -> list[BindingView]:
        return inventory.bindings(machine=hostname)

    @post("/{hostname:str}/bindings", summary="Bind a machine to a node (again: change the weight)")
    async def bind(self, inventory: Inventory, hostname: str, data: BindRequest) -> BindingView:
        return await inventory.bind(hostname, data)

    @delete("/{hostname:str}/bindings/{node:str}", summary="Unbind a machine from a node")
    async def unbind(self, inventory: Inventory, hostname: str, node: str) -> None:
        await inventory.unbind(hostname, node)


class BindingController(Controller):
    path = "/api/v1/bindings"
    tags = ["machines"]

    @get("/", summary="Bindings, optionally of one node or one machine")
    async def list_bindings(
        self, inventory: Inventory, node: str | None = None, machine: str | None = None
    ) -> list[BindingView]:
        return inventory.bindings(node=node, machine=machine)
