"""Objects with fixed timestamps and predictable ids, for tests of the core and the store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from treeherd.model.objects import Binding, Domain, DomainPort, Machine, ProvisioningRecord, TreeNode
from treeherd.model.services import Service, TaskSpec

FIXED_NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Ids:
    """An id factory: `ids()` returns id-1, id-2, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._counter = itertools.count(1)
        self._prefix = prefix

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


_ids = Ids("obj")


def node(path: str, *, parent_id: str | None = None, id: str | None = None, **fields: Any) -> TreeNode:
    return TreeNode(
        id=id or _ids(), created_at=FIXED_NOW, updated_at=FIXED_NOW, path=path, parent_id=parent_id, **fields
    )


def machine(hostname: str, *, id: str | None = None, **fields: Any) -> Machine:
    return Machine(id=id or _ids(), created_at=FIXED_NOW, updated_at=FIXED_NOW, hostname=hostname, **fields)


def binding(machine_id: str, node_id: str, *, weight: int = 1, id: str | None = None) -> Binding:
    return Binding(
        id=id or _ids(),
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        machine_id=machine_id,
        node_id=node_id,
        weight=weight,
    )


def domain(name: str, *, ports: tuple[int, ...] = (80,), id: str | None = None, **fields: Any) -> Domain:
    return Domain(
        id=id or _ids(),
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name=name,
        ports=[DomainPort(port=p) for p in ports],
        access_log_path=fields.pop("access_log_path", f"{name}_access.log"),
        error_log_path=fields.pop("error_log_path", f"{name}_error.log"),
        **fields,
    )


def provision(hostname: str, node_id: str, *, id: str | None = None) -> ProvisioningRecord:
    return ProvisioningRecord(
        id=id or _ids(), created_at=FIXED_NOW, updated_at=FIXED_NOW, hostname=hostname, node_id=node_id
    )


def service(name: str, node_id: str, *, id: str | None = None, **fields: Any) -> Service:
    """A service of `node_id` running `x` unless `task` says otherwise."""
    fields.setdefault("task", TaskSpec(command=["x"]))
    return Service(
        id=id or _ids(), created_at=FIXED_NOW, updated_at=FIXED_NOW, name=name, node_id=node_id, **fields
    )
