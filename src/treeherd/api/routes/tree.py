"""/api/v1/nodes: the service tree, its inheritance, and the routes each node serves."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import Parameter

from treeherd.api.routes.common import deleted, page
from treeherd.manager.inventory import Inventory
from treeherd.model.objects import AnyObject, TreeNode
from treeherd.model.requests import NodeCreate, NodeMove, NodeUpdate, RouteSpec
from treeherd.model.views import BindingView, Deleted, ResolvedNode


class NodeController(Controller):
    path = "/api/v1/nodes"
    tags = ["tree"]

    @get("/", summary="List tree nodes, sorted by path")
    async def list_nodes(
        self,
        inventory: Inventory,
        prefix: str | None = Parameter(default=None, description="only this node and its subtree"),
        limit: int | None = None,
        after: str | None = Parameter(default=None, description="paging cursor: the last path already seen"),
    ) -> list[TreeNode]:
        return page(inventory.nodes(prefix), lambda n: n.path, limit=limit, after=after)

    @post("/", summary="Create a node (its parent must exist)")
    async def create_node(self, inventory: Inventory, data: NodeCreate) -> AnyObject:
        return await inventory.create_node(data)

    @get("/{path:str}", summary="One node as stored")
    async def get_node(self, inventory: Inventory, path: str) -> TreeNode:
        return inventory.node(path)

    @get("/{path:str}/resolved", summary="A node's effective attributes and where each comes from")
    async def resolved(self, inventory: Inventory, path: str) -> ResolvedNode:
        return inventory.resolved(path)

    @patch("/{path:str}", summary="Change a node's attributes (maps merge; null clears)")
    async def update_node(self, inventory: Inventory, path: str, data: NodeUpdate) -> AnyObject:
        return await inventory.update_node(path, data)

    @post("/{path:str}/move", summary="Move or rename a node with its subtree", status_code=200)
    async def move_node(self, inventory: Inventory, path: str, data: NodeMove) -> AnyObject:
        return await inventory.move_node(path, data)

    @delete(
        "/{path:str}",
        summary="Delete a node (with recursive: its subtree, bindings and records)",
        status_code=200,
    )
    async def delete_node(
        self, inventory: Inventory, path: str, recursive: bool = False, version: int | None = None
    ) -> Deleted:
        return deleted(await inventory.delete_node(path, recursive=recursive, version=version))

    @post("/{path:str}/routes", summary="Route {domain, uri} to this node")
    async def add_route(self, inventory: Inventory, path: str, data: RouteSpec) -> AnyObject:
        return await inventory.add_route(path, data)

    @delete("/{path:str}/routes", summary="Remove a route from this node", status_code=200)
    async def remove_route(self, inventory: Inventory, path: str, domain: str, uri: str) -> AnyObject:
        return await inventory.remove_route(path, RouteSpec(domain=domain, uri=uri))

    @get("/{path:str}/bindings", summary="Machines bound to this node")
    async def node_bindings(self, inventory: Inventory, path: str) -> list[BindingView]:
        return inventory.bindings(node=path)
