"""Bad requests, table-driven: each gets a 4xx with an `{error, detail, field}` body and writes nothing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from treeherd.manager.inventory import Inventory
from treeherd.model.objects import DomainPort
from treeherd.model.requests import (
    BindRequest,
    DomainCreate,
    MachineCreate,
    NodeCreate,
    ProvisionCreate,
    RouteSpec,
)
from treeherd.store.memory import MemoryStore

Client = AsyncTestClient  # type: ignore[type-arg]
ANY = object()  # the case does not pin the `field`


def snapshot(store: MemoryStore) -> tuple[int, bytes]:
    """The store's revision and every object, encoded: equal snapshots mean nothing was written."""
    objects = sorted(store.view().objects(), key=lambda o: (o.kind, o.id))  # type: ignore[attr-defined]
    return store.revision, msgspec.msgpack.encode(objects)


@pytest.fixture
async def seeded(inventory: Inventory) -> Inventory:
    """corp.web holds two virtual machines and a route, corp.web.api one virtual machine, corp.db a
    physical machine and a provisioning record; corp.spare holds nothing."""
    for path in ("corp", "corp.web", "corp.web.api", "corp.db", "corp.spare"):
        await inventory.create_node(NodeCreate(path=path))
    for hostname, kind in (
        ("vm1", "virtual"),
        ("vm2", "virtual"),
        ("vm3", "virtual"),
        ("vm4", "virtual"),
        ("pm1", "physical"),
        ("pm2", "physical"),
    ):
        await inventory.create_machine(MachineCreate(hostname=f"{hostname}.example.com", machine_kind=kind))
    await inventory.bind("vm1.example.com", BindRequest(node="corp.web"))
    await inventory.bind("vm3.example.com", BindRequest(node="corp.web"))
    await inventory.bind("pm1.example.com", BindRequest(node="corp.db"))
    await inventory.bind("vm4.example.com", BindRequest(node="corp.web.api"))
    await inventory.create_domain(DomainCreate(name="shop.example.com", ports=[DomainPort(port=80)]))
    await inventory.add_route("corp.web", RouteSpec(domain="shop.example.com", uri="/"))
    await inventory.create_provision(ProvisionCreate(hostname="new1.example.com", node="corp.db"))
    return inventory


class Case(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    method: str
    url: str
    status: int
    field: Any = ANY
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None


NODES = "/api/v1/nodes"
MACHINES = "/api/v1/machines"
DOMAINS = "/api/v1/domains"
SSL = [{"port": 443, "ssl": True}]

CASES = [
    # tree nodes
    Case(id="invalid path", method="POST", url=NODES, json={"path": "Corp..Web"}, status=400, field="path"),
    Case(
        id="path with a newline",
        method="POST",
        url=NODES,
        json={"path": "corp.x\n"},
        status=400,
        field="path",
    ),
    Case(id="duplicate path", method="POST", url=NODES, json={"path": "corp.web"}, status=409, field="path"),
    Case(
        id="unknown parent", method="POST", url=NODES, json={"path": "nope.child"}, status=404, field="path"
    ),
    Case(
        id="port out of range",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "port": 70000},
        status=400,
        field="port",
    ),
    Case(
        id="label value injection",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "labels": {"k": "a;b"}},
        status=400,
        field="labels",
    ),
    Case(
        id="bad puppet class",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "puppet_classes": {"Not A Class": {}}},
        status=400,
        field="puppet_classes",
    ),
    Case(
        id="stale version in PATCH",
        method="PATCH",
        url=f"{NODES}/corp.web",
        json={"version": 1, "port": 81},
        status=409,
        field="version",
    ),
    Case(
        id="PATCH unknown node",
        method="PATCH",
        url=f"{NODES}/nope",
        json={"port": 81},
        status=404,
        field="path",
    ),
    Case(
        id="move under itself",
        method="POST",
        url=f"{NODES}/corp/move",
        json={"to": "corp.web.x"},
        status=409,
        field="to",
    ),
    Case(
        id="move onto an existing node",
        method="POST",
        url=f"{NODES}/corp.web.api/move",
        json={"to": "corp.db"},
        status=409,
        field="to",
    ),
    Case(id="delete node with children", method="DELETE", url=f"{NODES}/corp", status=409, field=None),
    Case(
        id="delete node with bindings and a record",
        method="DELETE",
        url=f"{NODES}/corp.db",
        status=409,
        field=None,
    ),
    Case(
        id="delete node with bindings", method="DELETE", url=f"{NODES}/corp.web.api", status=409, field=None
    ),
    # routes
    Case(
        id="uri without leading slash",
        method="POST",
        url=f"{NODES}/corp.db/routes",
        json={"domain": "shop.example.com", "uri": "api"},
        status=400,
        field="uri",
    ),
    Case(
        id="uri injection",
        method="POST",
        url=f"{NODES}/corp.db/routes",
        json={"domain": "shop.example.com", "uri": "/a; return 301 http://evil;"},
        status=400,
        field="uri",
    ),
    Case(
        id="route already held",
        method="POST",
        url=f"{NODES}/corp.db/routes",
        json={"domain": "shop.example.com", "uri": "/"},
        status=409,
        field="uri",
    ),
    Case(
        id="route to an unknown domain",
        method="POST",
        url=f"{NODES}/corp.db/routes",
        json={"domain": "nope.example.com", "uri": "/"},
        status=404,
        field="domain",
    ),
    # machines and bindings
    Case(
        id="duplicate hostname",
        method="POST",
        url=MACHINES,
        json={"hostname": "VM1.Example.com"},
        status=409,
        field="hostname",
    ),
    Case(
        id="invalid IP",
        method="POST",
        url=MACHINES,
        json={"hostname": "new.example.com", "ips": ["10.0.0.300"]},
        status=400,
        field="ips",
    ),
    Case(
        id="negative cpus",
        method="POST",
        url=MACHINES,
        json={"hostname": "new.example.com", "cpus": -1},
        status=400,
        field="cpus",
    ),
    Case(
        id="unknown machine kind",
        method="POST",
        url=MACHINES,
        json={"hostname": "new.example.com", "machine_kind": "cloud"},
        status=400,
        field="machine_kind",
    ),
    Case(
        id="physical bound to a node holding virtual machines",
        method="POST",
        url=f"{MACHINES}/pm2.example.com/bindings",
        json={"node": "corp.web"},
        status=409,
        field="node",
    ),
    Case(
        id="virtual bound to a node holding physical machines",
        method="POST",
        url=f"{MACHINES}/vm2.example.com/bindings",
        json={"node": "corp.db"},
        status=409,
        field="node",
    ),
    Case(
        id="kind change that would mix a node",
        method="PATCH",
        url=f"{MACHINES}/vm1.example.com",
        json={"machine_kind": "physical"},
        status=409,
        field="node",
    ),
    Case(
        id="weight 300",
        method="POST",
        url=f"{MACHINES}/vm2.example.com/bindings",
        json={"node": "corp.web", "weight": 300},
        status=400,
        field="weight",
    ),
    Case(
        id="negative weight",
        method="POST",
        url=f"{MACHINES}/vm2.example.com/bindings",
        json={"node": "corp.web", "weight": -1},
        status=400,
        field="weight",
    ),
    Case(
        id="delete a bound machine",
        method="DELETE",
        url=f"{MACHINES}/vm1.example.com",
        status=409,
        field=None,
    ),
    Case(
        id="unbind what is not bound",
        method="DELETE",
        url=f"{MACHINES}/vm2.example.com/bindings/corp.web",
        status=404,
        field="node",
    ),
    # domains
    Case(
        id="ssl port without cert or key",
        method="POST",
        url=DOMAINS,
        json={"name": "secure.example.com", "ports": SSL},
        status=400,
        field="ssl_cert_path",
    ),
    Case(
        id="ssl port without key",
        method="POST",
        url=DOMAINS,
        json={"name": "secure.example.com", "ports": SSL, "ssl_cert_path": "/etc/ssl/c.pem"},
        status=400,
        field="ssl_key_path",
    ),
    Case(
        id="no ports",
        method="POST",
        url=DOMAINS,
        json={"name": "x.example.com", "ports": []},
        status=400,
        field="ports",
    ),
    Case(
        id="log path injection",
        method="POST",
        url=DOMAINS,
        json={"name": "x.example.com", "ports": [{"port": 80}], "access_log_path": "/a.log;\ninclude /x"},
        status=400,
        field="access_log_path",
    ),
    Case(
        id="delete a domain used by a route",
        method="DELETE",
        url=f"{DOMAINS}/shop.example.com",
        status=409,
        field=None,
    ),
    # provisioning
    Case(
        id="duplicate provisioning hostname",
        method="POST",
        url="/api/v1/provisioning",
        json={"hostname": "new1.example.com", "node": "corp.web"},
        status=409,
        field="hostname",
    ),
    Case(
        id="provisioning for an unknown node",
        method="POST",
        url="/api/v1/provisioning",
        json={"hostname": "new2.example.com", "node": "nope"},
        status=404,
        field="node",
    ),
    # bodies that do not decode
    Case(id="malformed JSON", method="POST", url=NODES, content=b'{"path": ', status=400, field=None),
    Case(
        id="JSON array instead of an object",
        method="POST",
        url=NODES,
        json=[{"path": "corp.x"}],
        status=400,
        field=None,
    ),
    Case(id="JSON null body", method="POST", url=NODES, content=b"null", status=400, field=None),
    Case(
        id="port as a string",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "port": "80"},
        status=400,
        field="port",
    ),
    Case(
        id="weight as a string",
        method="POST",
        url=f"{MACHINES}/vm2.example.com/bindings",
        json={"node": "corp.web", "weight": "2"},
        status=400,
        field="weight",
    ),
    Case(
        id="label value as an int",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "labels": {"a": 1}},
        status=400,
        field="labels",
    ),
    Case(
        id="unknown top-level field",
        method="POST",
        url=NODES,
        json={"path": "corp.x", "colour": "red"},
        status=400,
        field="colour",
    ),
    Case(
        id="unknown field in PATCH",
        method="PATCH",
        url=f"{NODES}/corp.web",
        json={"path": "corp.y"},
        status=400,
        field="path",
    ),
    Case(
        id="unknown nested field",
        method="POST",
        url=DOMAINS,
        json={"name": "x.example.com", "ports": [{"port": 80, "tls": True}]},
        status=400,
        field="ports[0].tls",
    ),
    Case(
        id="missing required field", method="POST", url=NODES, json={"labels": {}}, status=400, field="path"
    ),
    # query parameters
    Case(id="limit=0", method="GET", url=NODES, params={"limit": 0}, status=400, field="limit"),
    Case(id="limit=abc", method="GET", url=NODES, params={"limit": "abc"}, status=400, field="limit"),
    Case(
        id="limit=-1 on machines", method="GET", url=MACHINES, params={"limit": -1}, status=400, field="limit"
    ),
    Case(
        id="unknown kind filter",
        method="GET",
        url="/api/v1/events",
        params={"kind": "bogus"},
        status=400,
        field="kind",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_bad_input_is_refused_and_writes_nothing(
    client: Client, store: MemoryStore, seeded: Inventory, case: Case
) -> None:
    before = snapshot(store)
    kwargs: dict[str, Any] = {"params": case.params}
    if case.content is not None:
        kwargs["content"] = case.content
        kwargs["headers"] = {"content-type": "application/json"}
    elif case.json is not None:
        kwargs["json"] = case.json
    response = await client.request(case.method, case.url, **kwargs)

    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == case.status, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error", "detail", "field"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"].strip()
    if case.field is not ANY:
        assert body["field"] == case.field, body
    assert snapshot(store) == before


async def test_the_seed_is_what_the_cases_assume(
    client: Client, store: MemoryStore, seeded: Inventory
) -> None:
    """The control case: the same client and seed do write when the request is good."""
    before = snapshot(store)
    response = await client.delete(f"{NODES}/corp.spare")
    assert response.status_code == 200, response.text
    assert snapshot(store) != before
    assert store.revision == before[0] + 1
