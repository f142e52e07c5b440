"""The inventory service: applies the core's plans for the tree, machines, domains and provisioning.

Every write is `plan(view, request, now, new_id) -> ops` followed by one store commit. A plan that loses a
race (an object it read changed before its commit) is made again from the new state, a few times, unless
the caller pinned the version it read: then the conflict is the caller's to resolve.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from treeherd.core.tree import inventory as inv
from treeherd.core.tree import nodes
from treeherd.core.tree.tree import ancestors, resolve
from treeherd.core.view import View
from treeherd.manager.commits import Lost, commit_plan
from treeherd.model.errors import NotFound
from treeherd.model.objects import AnyObject, Binding, Domain, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Op
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    DomainUpdate,
    MachineCreate,
    MachineUpdate,
    NodeCreate,
    NodeMove,
    NodeUpdate,
    ProvisionCreate,
    RouteSpec,
)
from treeherd.model.views import BindingView, ResolvedNode
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Committed, Store


class Inventory:
    """Reads and writes of the service tree and inventory, on top of a store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        ids: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self.clock = clock  # the API's clock and ids: every write of every route takes them from here
        self.ids = ids

    @property
    def view(self) -> View:
        return self.store.view()

    async def apply(self, plan: Callable[[View], list[Op]], *, pinned: bool = False) -> Committed:
        """Make the plan from the current view and commit it; made again if it loses a race, unless
        the caller pinned the version it read (then the conflict is raised)."""
        return await commit_plan(self.store, plan, on_conflict=Lost.RAISE if pinned else Lost.RETRY)

    async def _first(self, plan: Callable[[View], list[Op]], *, pinned: bool = False) -> AnyObject:
        return (await self.apply(plan, pinned=pinned)).objects[0]

    # ---- tree ------------------------------------------------------------------------------------
    def node(self, path: str) -> TreeNode:
        return nodes.node_by_path(self.view, path)

    def nodes(self, prefix: str | None = None) -> list[TreeNode]:
        found = self.view.all(TreeNode)
        if prefix:
            found = (n for n in found if n.path == prefix or n.path.startswith(prefix + "."))
        return sorted(found, key=lambda n: n.path)

    def resolved(self, path: str) -> ResolvedNode:
        node = self.node(path)
        return resolve(node, ancestors(self.view, node))

    async def create_node(self, request: NodeCreate) -> AnyObject:
        return await self._first(lambda v: nodes.plan_create_node(v, request, self.clock(), self.ids))

    async def update_node(self, path: str, request: NodeUpdate) -> AnyObject:
        return await self._first(
            lambda v: nodes.plan_update_node(v, path, request, self.clock()),
            pinned=request.version is not None,
        )

    async def move_node(self, path: str, request: NodeMove) -> AnyObject:
        return await self._first(
            lambda v: nodes.plan_move_node(v, path, request, self.clock()),
            pinned=request.version is not None,
        )

    async def delete_node(self, path: str, *, recursive: bool, version: int | None = None) -> list[AnyObject]:
        committed = await self.apply(
            lambda v: nodes.plan_delete_node(v, path, recursive=recursive, version=version),
            pinned=version is not None,
        )
        return committed.objects

    async def add_route(self, path: str, request: RouteSpec) -> AnyObject:
        return await self._first(lambda v: nodes.plan_add_route(v, path, request, self.clock()))

    async def remove_route(self, path: str, request: RouteSpec) -> AnyObject:
        return await self._first(lambda v: nodes.plan_remove_route(v, path, request, self.clock()))

    # ---- machines and bindings -------------------------------------------------------------------
    def machine(self, hostname: str) -> Machine:
        return inv.machine_by_hostname(self.view, hostname)

    def machines(self, *, node: str | None = None) -> list[Machine]:
        view = self.view
        if node is None:
            found = list(view.all(Machine))
        else:
            target = nodes.node_by_path(view, node, field="node")
            found = [
                m
                for b in view.referrers(Binding, "node", target.id)
                if (m := view.get(Machine, b.machine_id))
            ]
        return sorted(found, key=lambda m: m.hostname)

    async def create_machine(self, request: MachineCreate) -> AnyObject:
        return await self._first(lambda v: inv.plan_create_machine(v, request, self.clock(), self.ids))

    async def update_machine(self, hostname: str, request: MachineUpdate) -> AnyObject:
        return await self._first(
            lambda v: inv.plan_update_machine(v, hostname, request, self.clock()),
            pinned=request.version is not None,
        )

    async def delete_machine(
        self, hostname: str, *, force: bool, version: int | None = None
    ) -> list[AnyObject]:
        committed = await self.apply(
            lambda v: inv.plan_delete_machine(
                v, hostname, force=force, version=version, now=self.clock(), new_id=self.ids
            ),
            pinned=version is not None,
        )
        return committed.objects

    async def bind(self, hostname: str, request: BindRequest) -> BindingView:
        binding = await self._first(lambda v: inv.plan_bind(v, hostname, request, self.clock(), self.ids))
        assert isinstance(binding, Binding)
        return self.binding_view(binding)

    async def unbind(self, hostname: str, path: str) -> None:
        await self.apply(lambda v: inv.plan_unbind(v, hostname, path))

    def bindings(self, *, node: str | None = None, machine: str | None = None) -> list[BindingView]:
        view = self.view
        if machine is not None:
            found = view.referrers(Binding, "machine", self.machine(machine).id)
            if node is not None:
                found = [b for b in found if b.node_id == self.node(node).id]
        elif node is not None:
            found = view.referrers(Binding, "node", self.node(node).id)
        else:
            found = list(view.all(Binding))
        return sorted((self.binding_view(b) for b in found), key=lambda b: (b.path, b.hostname))

    def binding_view(self, binding: Binding) -> BindingView:
        view = self.view
        machine = view.get(Machine, binding.machine_id)
        node = view.get(TreeNode, binding.node_id)
        return BindingView(
            id=binding.id,
            version=binding.version,
            hostname=machine.hostname if machine else binding.machine_id,
            path=node.path if node else binding.node_id,
            weight=binding.weight,
            machine_id=binding.machine_id,
            node_id=binding.node_id,
        )

    # ---- domains ---------------------------------------------------------------------------------
    def domain(self, name: str) -> Domain:
        return nodes.domain_by_name(self.view, name, field="name")

    def domains(self) -> list[Domain]:
        return sorted(self.view.all(Domain), key=lambda d: d.name)

    async def create_domain(self, request: DomainCreate) -> AnyObject:
        return await self._first(lambda v: inv.plan_create_domain(v, request, self.clock(), self.ids))

    async def update_domain(self, name: str, request: DomainUpdate) -> AnyObject:
        return await self._first(
            lambda v: inv.plan_update_domain(v, name, request, self.clock()),
            pinned=request.version is not None,
        )

    async def delete_domain(self, name: str, *, version: int | None = None) -> None:
        await self.apply(
            lambda v: inv.plan_delete_domain(v, name, version=version), pinned=version is not None
        )

    # ---- provisioning ----------------------------------------------------------------------------
    def provisions(self) -> list[ProvisioningRecord]:
        return sorted(self.view.all(ProvisioningRecord), key=lambda r: r.hostname)

    def provision(self, hostname: str) -> ProvisioningRecord:
        record = self.view.lookup(ProvisioningRecord, "hostname", hostname.strip().lower())
        if record is None:
            raise NotFound(f"no provisioning record for {hostname!r}", field="hostname")
        return record

    async def create_provision(self, request: ProvisionCreate) -> AnyObject:
        return await self._first(lambda v: inv.plan_create_provision(v, request, self.clock(), self.ids))

    async def delete_provision(self, hostname: str) -> None:
        await self.apply(lambda v: inv.plan_delete_provision(v, hostname))
