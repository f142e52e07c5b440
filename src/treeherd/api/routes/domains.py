"""/api/v1/domains and /api/v1/provisioning: edge domains, and hosts still being installed."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post

from treeherd.manager.inventory import Inventory
from treeherd.model.objects import AnyObject, Domain, ProvisioningRecord, TreeNode
from treeherd.model.requests import DomainCreate, DomainUpdate, ProvisionCreate
from treeherd.model.views import ProvisionView


class DomainController(Controller):
    path = "/api/v1/domains"
    tags = ["domains"]

    @get("/", summary="List domains")
    async def list_domains(self, inventory: Inventory) -> list[Domain]:
        return inventory.domains()

    @post("/", summary="Add a domain (ssl ports need a certificate and a key)")
    async def create_domain(self, inventory: Inventory, data: DomainCreate) -> AnyObject:
        return await inventory.create_domain(data)

    @get("/{name:str}", summary="One domain")
    async def get_domain(self, inventory: Inventory, name: str) -> Domain:
        return inventory.domain(name)

    @patch("/{name:str}", summary="Change a domain")
    async def update_domain(self, inventory: Inventory, name: str, data: DomainUpdate) -> AnyObject:
        return await inventory.update_domain(name, data)

    @delete("/{name:str}", summary="Remove a domain no route uses")
    async def delete_domain(self, inventory: Inventory, name: str, version: int | None = None) -> None:
        await inventory.delete_domain(name, version=version)


def provision_view(inventory: Inventory, record: ProvisioningRecord) -> ProvisionView:
    node = inventory.view.get(TreeNode, record.node_id)
    return ProvisionView(
        id=record.id,
        version=record.version,
        hostname=record.hostname,
        path=node.path if node else record.node_id,
        node_id=record.node_id,
        created_at=record.created_at.isoformat(),
    )


class ProvisionController(Controller):
    path = "/api/v1/provisioning"
    tags = ["provisioning"]

    @get("/", summary="Hosts being installed and their intended nodes")
    async def list_records(self, inventory: Inventory) -> list[ProvisionView]:
        return [provision_view(inventory, r) for r in inventory.provisions()]

    @post("/", summary="Record the node a host being installed is meant for")
    async def create_record(self, inventory: Inventory, data: ProvisionCreate) -> ProvisionView:
        record = await inventory.create_provision(data)
        assert isinstance(record, ProvisioningRecord)
        return provision_view(inventory, record)

    @get("/{hostname:str}", summary="One provisioning record")
    async def get_record(self, inventory: Inventory, hostname: str) -> ProvisionView:
        return provision_view(inventory, inventory.provision(hostname))

    @delete("/{hostname:str}", summary="Remove a provisioning record")
    async def delete_record(self, inventory: Inventory, hostname: str) -> None:
        await inventory.delete_provision(hostname)
