"""Fixtures of the core tests: an opened in-memory store and a small world built through the plans."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from treeherd.core.tree import inventory as inv
from treeherd.core.tree import nodes
from treeherd.core.view import View
from treeherd.model.objects import Binding, Domain, DomainPort, Machine, ProvisioningRecord, TreeNode
from treeherd.model.ops import Op
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    MachineCreate,
    NodeCreate,
    ProvisionCreate,
    RouteSpec,
)
from treeherd.store.base import Committed
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids


class World:
    """Builds state by making plans against the store's view and committing them."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.ids = Ids("t")
        self.now: datetime = FIXED_NOW

    @property
    def view(self) -> View:
        return self.store.view()

    async def commit(self, ops: Sequence[Op]) -> Committed:
        return await self.store.commit(ops)

    def get_node(self, path: str) -> TreeNode | None:
        return self.view.lookup(TreeNode, "path", path)

    def get_machine(self, hostname: str) -> Machine | None:
        return self.view.lookup(Machine, "hostname", hostname)

    def get_domain(self, name: str) -> Domain | None:
        return self.view.lookup(Domain, "name", name)

    def paths(self) -> list[str]:
        return sorted(n.path for n in self.view.all(TreeNode))

    async def node(self, path: str, **fields: Any) -> TreeNode:
        await self.commit(
            nodes.plan_create_node(self.view, NodeCreate(path=path, **fields), self.now, self.ids)
        )
        found = self.get_node(path)
        assert found is not None
        return found

    async def nodes(self, *paths: str) -> list[TreeNode]:
        return [await self.node(path) for path in paths]

    async def machine(self, hostname: str, kind: str = "virtual", **fields: Any) -> Machine:
        request = MachineCreate(hostname=hostname, machine_kind=kind, **fields)  # type: ignore[arg-type]
        committed = await self.commit(inv.plan_create_machine(self.view, request, self.now, self.ids))
        created = committed.objects[0]
        assert isinstance(created, Machine)
        return created

    async def bind(self, hostname: str, path: str, weight: int = 1) -> Binding:
        request = BindRequest(node=path, weight=weight)
        committed = await self.commit(inv.plan_bind(self.view, hostname, request, self.now, self.ids))
        created = committed.objects[0]
        assert isinstance(created, Binding)
        return created

    async def domain(self, name: str, ports: Sequence[int] = (80,), **fields: Any) -> Domain:
        request = DomainCreate(name=name, ports=[DomainPort(port=p) for p in ports], **fields)
        committed = await self.commit(inv.plan_create_domain(self.view, request, self.now, self.ids))
        created = committed.objects[0]
        assert isinstance(created, Domain)
        return created

    async def route(self, path: str, domain: str, uri: str) -> TreeNode:
        request = RouteSpec(domain=domain, uri=uri)
        committed = await self.commit(nodes.plan_add_route(self.view, path, request, self.now))
        updated = committed.objects[0]
        assert isinstance(updated, TreeNode)
        return updated

    async def provision(self, hostname: str, path: str) -> ProvisioningRecord:
        request = ProvisionCreate(hostname=hostname, node=path)
        committed = await self.commit(inv.plan_create_provision(self.view, request, self.now, self.ids))
        created = committed.objects[0]
        assert isinstance(created, ProvisioningRecord)
        return created


@pytest.fixture
def world(store: MemoryStore) -> World:
    return World(store)
