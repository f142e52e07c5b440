"""Every endpoint of the REST API, through the real application over an in-memory store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from treeherd.api.app import create_app
from treeherd.manager.inventory import Inventory
from treeherd.model.errors import AlreadyExists
from treeherd.model.objects import TreeNode
from treeherd.model.requests import BindRequest, MachineCreate, NodeCreate
from treeherd.model.views import BindingView
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids

Client = AsyncTestClient  # type: ignore[type-arg]
ERROR_KEYS = {"error", "detail", "field"}
NODES = "/api/v1/nodes"
MACHINES = "/api/v1/machines"
DOMAINS = "/api/v1/domains"
PROVISIONING = "/api/v1/provisioning"


def is_error(response: Any, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["detail"]
    if code is not None:
        assert body["error"] == code, body
    if field is not None:
        assert body["field"] == field, body
    return body


async def create(client: Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def seed_tree(client: Client) -> None:
    for path in ("corp", "corp.web", "corp.web.api", "corp.db"):
        await create(client, NODES, {"path": path})


# ---- system ---------------------------------------------------------------------------------------
async def test_healthz(client: Client, store: MemoryStore) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "revision": 0, "version": "0.1.0"}
    await create(client, NODES, {"path": "corp"})
    assert (await client.get("/healthz")).json()["revision"] == store.revision == 1


async def test_openapi_document(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert "openapi" in document
    paths = document["paths"]
    for path in (
        "/api/v1/nodes",
        "/api/v1/nodes/{path}",
        "/api/v1/nodes/{path}/resolved",
        "/api/v1/nodes/{path}/move",
        "/api/v1/nodes/{path}/routes",
        "/api/v1/nodes/{path}/bindings",
        "/api/v1/machines",
        "/api/v1/machines/{hostname}",
        "/api/v1/machines/{hostname}/bindings",
        "/api/v1/bindings",
        "/api/v1/domains",
        "/api/v1/domains/{name}",
        "/api/v1/provisioning",
        "/api/v1/provisioning/{hostname}",
        "/api/v1/events",
        "/healthz",
    ):
        assert path in paths, path


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/api/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/api/v1/nodes/corp/nope"),
        ("GET", "/api/v2/nodes"),
    ],
)
async def test_unknown_endpoint_is_404(client: Client, method: str, url: str) -> None:
    body = is_error(await client.request(method, url), 404, "not_found")
    assert "no such endpoint" in body["detail"]


async def test_wrong_method_is_405(client: Client) -> None:
    is_error(await client.put(NODES, json={"path": "corp"}), 405)


# ---- nodes ----------------------------------------------------------------------------------------
async def test_create_and_read_nodes(client: Client) -> None:
    root = await create(client, NODES, {"path": "corp", "labels": {"team": "infra"}, "port": 8080})
    assert root["kind"] == "node"
    assert (root["path"], root["parent_id"], root["version"]) == ("corp", None, 1)
    assert root["labels"] == {"team": "infra"}
    assert root["created_at"] == root["updated_at"] == "2026-01-01T00:00:00Z"
    child = await create(client, NODES, {"path": "corp.web"})
    assert child["parent_id"] == root["id"]

    response = await client.get(f"{NODES}/corp.web")
    assert response.status_code == 200
    assert response.json() == child
    is_error(await client.get(f"{NODES}/nope"), 404, "not_found", "path")


async def test_list_nodes_sorted_with_prefix_and_paging(client: Client) -> None:
    for path in ("corp", "corp.web", "corp.db", "corpx", "corp.web.api"):
        await create(client, NODES, {"path": path})

    async def paths(**params: Any) -> list[str]:
        response = await client.get(NODES, params=params)
        assert response.status_code == 200, response.text
        return [n["path"] for n in response.json()]

    assert await paths() == ["corp", "corp.db", "corp.web", "corp.web.api", "corpx"]
    assert await paths(prefix="corp.web") == ["corp.web", "corp.web.api"]
    assert await paths(prefix="corp") == ["corp", "corp.db", "corp.web", "corp.web.api"]
    assert await paths(limit=2) == ["corp", "corp.db"]
    assert await paths(limit=2, after="corp.db") == ["corp.web", "corp.web.api"]
    assert await paths(after="corpx") == []


async def test_update_node(client: Client) -> None:
    await create(client, NODES, {"path": "corp", "labels": {"a": "1", "b": "2"}, "port": 80})
    response = await client.patch(f"{NODES}/corp", json={"labels": {"b": None, "c": "3"}, "ip_hash": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == {"a": "1", "c": "3"}
    assert (body["port"], body["ip_hash"], body["version"]) == (80, True, 2)
    response = await client.patch(f"{NODES}/corp", json={"port": None, "version": 2})
    assert response.status_code == 200, response.text
    assert response.json()["port"] is None
    is_error(await client.patch(f"{NODES}/corp", json={"port": 1, "version": 2}), 409, "conflict", "version")
    is_error(await client.patch(f"{NODES}/nope", json={}), 404, "not_found")


async def test_resolved_node(client: Client) -> None:
    await create(
        client,
        NODES,
        {
            "path": "corp",
            "labels": {"team": "infra", "tier": "base"},
            "puppet_classes": {"base": {}, "profile::mail": {"relay": "mx"}},
            "puppet_environment": "production",
            "port": 8080,
        },
    )
    await create(
        client,
        NODES,
        {"path": "corp.web", "labels": {"tier": "web"}, "puppet_exclude": ["profile::mail"], "ip_hash": True},
    )
    response = await client.get(f"{NODES}/corp.web/resolved")
    assert response.status_code == 200, response.text
    resolved = response.json()
    assert resolved["path"] == "corp.web"
    assert resolved["labels"] == {
        "team": {"value": "infra", "source": "corp"},
        "tier": {"value": "web", "source": "corp.web"},
    }
    assert resolved["puppet_classes"] == {"base": {"params": {}, "source": "corp"}}
    assert resolved["puppet_environment"] == {"value": "production", "source": "corp"}
    assert resolved["port"] == {"value": 8080, "source": "corp"}
    assert resolved["ip_hash"] == {"value": True, "source": "corp.web"}
    assert resolved["upstream"] == {"value": "corp_web", "source": "(default)"}
    is_error(await client.get(f"{NODES}/nope/resolved"), 404, "not_found")


async def test_move_node(client: Client) -> None:
    await seed_tree(client)
    await create(client, NODES, {"path": "org"})
    response = await client.post(f"{NODES}/corp.web/move", json={"to": "org.web"})
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "org.web"
    is_error(await client.get(f"{NODES}/corp.web"), 404)
    assert (await client.get(f"{NODES}/org.web.api")).status_code == 200
    is_error(await client.post(f"{NODES}/org/move", json={"to": "org.web.x"}), 409, "refused", "to")
    is_error(await client.post(f"{NODES}/org.web/move", json={"to": "corp.db"}), 409, "already_exists", "to")
    is_error(await client.post(f"{NODES}/org.web/move", json={"to": "nope.web"}), 404, "not_found", "to")
    is_error(await client.post(f"{NODES}/nope/move", json={"to": "x"}), 404, "not_found")


async def test_delete_nodes(client: Client) -> None:
    await seed_tree(client)
    response = await client.delete(f"{NODES}/corp.db")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": {"node": 1}}
    is_error(await client.delete(f"{NODES}/corp"), 409, "refused")
    await create(client, MACHINES, {"hostname": "m1"})
    await create(client, f"{MACHINES}/m1/bindings", {"node": "corp.web.api"})
    await create(client, PROVISIONING, {"hostname": "new1", "node": "corp.web"})
    is_error(await client.delete(f"{NODES}/corp.web.api"), 409, "refused")
    is_error(
        await client.delete(f"{NODES}/corp", params={"recursive": "true", "version": 99}), 409, "conflict"
    )
    response = await client.delete(f"{NODES}/corp", params={"recursive": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": {"node": 3, "binding": 1, "provision": 1}}
    assert (await client.get(NODES)).json() == []
    assert [m["hostname"] for m in (await client.get(MACHINES)).json()] == ["m1"]
    is_error(await client.delete(f"{NODES}/corp"), 404, "not_found")


async def test_routes(client: Client) -> None:
    await seed_tree(client)
    domain = await create(client, DOMAINS, {"name": "shop.example.com", "ports": [{"port": 80}]})
    node = await create(client, f"{NODES}/corp.web/routes", {"domain": "shop.example.com", "uri": "/api"})
    assert node["path"] == "corp.web"
    assert node["domain_uris"] == [{"domain_id": domain["id"], "uri": "/api"}]
    body = is_error(
        await client.post(f"{NODES}/corp.db/routes", json={"domain": "shop.example.com", "uri": "/api"}),
        409,
        "already_exists",
        "uri",
    )
    assert "'corp.web'" in body["detail"]
    is_error(
        await client.post(f"{NODES}/corp.db/routes", json={"domain": "nope.example.com", "uri": "/"}),
        404,
        "not_found",
        "domain",
    )
    is_error(await client.delete(f"{DOMAINS}/shop.example.com"), 409, "refused")
    params = {"domain": "shop.example.com", "uri": "/api"}
    response = await client.delete(f"{NODES}/corp.web/routes", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["domain_uris"] == []
    is_error(await client.delete(f"{NODES}/corp.web/routes", params=params), 404, "not_found", "uri")
    assert (await client.delete(f"{DOMAINS}/shop.example.com")).status_code == 204


# ---- machines and bindings ---------------------------------------------------------------------------
async def test_machines_crud(client: Client) -> None:
    created = await create(
        client,
        MACHINES,
        {"hostname": "Web1.Example.com", "ips": ["10.0.0.1"], "machine_kind": "physical", "cpus": 8},
    )
    assert created["kind"] == "machine"
    assert created["hostname"] == "web1.example.com"
    await create(client, MACHINES, {"hostname": "db1.example.com"})
    listed = (await client.get(MACHINES)).json()
    assert [m["hostname"] for m in listed] == ["db1.example.com", "web1.example.com"]
    assert [m["hostname"] for m in (await client.get(MACHINES, params={"limit": 1})).json()] == [
        "db1.example.com"
    ]
    paged = (await client.get(MACHINES, params={"after": "db1.example.com"})).json()
    assert [m["hostname"] for m in paged] == ["web1.example.com"]

    response = await client.get(f"{MACHINES}/WEB1.example.com")
    assert response.status_code == 200
    assert response.json() == created
    is_error(await client.get(f"{MACHINES}/nope"), 404, "not_found", "hostname")

    response = await client.patch(f"{MACHINES}/web1.example.com", json={"labels": {"rack": "r1"}, "cpus": 16})
    assert response.status_code == 200, response.text
    assert (response.json()["labels"], response.json()["cpus"]) == ({"rack": "r1"}, 16)
    is_error(await client.patch(f"{MACHINES}/nope", json={}), 404)

    response = await client.delete(f"{MACHINES}/db1.example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": {"machine": 1}}
    is_error(await client.delete(f"{MACHINES}/db1.example.com"), 404)


async def test_bindings(client: Client) -> None:
    await seed_tree(client)
    await create(client, MACHINES, {"hostname": "v1"})
    await create(client, MACHINES, {"hostname": "v2"})
    await create(client, MACHINES, {"hostname": "p1", "machine_kind": "physical"})

    bound = await create(client, f"{MACHINES}/v1/bindings", {"node": "corp.web", "weight": 5})
    assert (bound["hostname"], bound["path"], bound["weight"]) == ("v1", "corp.web", 5)
    again = await create(client, f"{MACHINES}/v1/bindings", {"node": "corp.web", "weight": 9})
    assert (again["id"], again["weight"]) == (bound["id"], 9)
    await create(client, f"{MACHINES}/v1/bindings", {"node": "corp.web.api"})
    await create(client, f"{MACHINES}/v2/bindings", {"node": "corp.web"})
    await create(client, f"{MACHINES}/p1/bindings", {"node": "corp.db"})
    is_error(await client.post(f"{MACHINES}/p1/bindings", json={"node": "corp.web"}), 409, "refused", "node")
    is_error(await client.post(f"{MACHINES}/nope/bindings", json={"node": "corp"}), 404, "not_found")
    is_error(await client.post(f"{MACHINES}/v1/bindings", json={"node": "nope"}), 404, "not_found", "node")

    def pairs(response: Any) -> list[tuple[str, str]]:
        assert response.status_code == 200, response.text
        return [(b["path"], b["hostname"]) for b in response.json()]

    everything = [("corp.db", "p1"), ("corp.web", "v1"), ("corp.web", "v2"), ("corp.web.api", "v1")]
    assert pairs(await client.get("/api/v1/bindings")) == everything
    assert pairs(await client.get("/api/v1/bindings", params={"node": "corp.web"})) == everything[1:3]
    assert pairs(await client.get("/api/v1/bindings", params={"machine": "v1"})) == [
        everything[1],
        everything[3],
    ]
    both = {"machine": "v1", "node": "corp.web.api"}
    assert pairs(await client.get("/api/v1/bindings", params=both)) == [everything[3]]
    is_error(await client.get("/api/v1/bindings", params={"node": "nope"}), 404)
    is_error(await client.get("/api/v1/bindings", params={"machine": "nope"}), 404)
    assert pairs(await client.get(f"{MACHINES}/v1/bindings")) == [everything[1], everything[3]]
    assert pairs(await client.get(f"{NODES}/corp.web/bindings")) == everything[1:3]
    is_error(await client.get(f"{NODES}/nope/bindings"), 404)
    machines = (await client.get(MACHINES, params={"node": "corp.web"})).json()
    assert [m["hostname"] for m in machines] == ["v1", "v2"]

    is_error(await client.patch(f"{MACHINES}/v1", json={"machine_kind": "physical"}), 409, "refused", "node")
    assert (await client.delete(f"{MACHINES}/v2/bindings/corp.web")).status_code == 204
    is_error(await client.delete(f"{MACHINES}/v2/bindings/corp.web"), 404, "not_found", "node")
    is_error(await client.delete(f"{MACHINES}/v1"), 409, "refused")
    response = await client.delete(f"{MACHINES}/v1", params={"force": "true"})
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": {"binding": 2, "machine": 1}}
    assert pairs(await client.get("/api/v1/bindings")) == [("corp.db", "p1")]


# ---- domains and provisioning -------------------------------------------------------------------------
async def test_domains_crud(client: Client) -> None:
    created = await create(client, DOMAINS, {"name": "Shop.Example.com", "ports": [{"port": 80}]})
    assert created["kind"] == "domain"
    assert created["name"] == "shop.example.com"
    assert created["access_log_path"] == "shop.example.com_access.log"
    assert created["error_log_path"] == "shop.example.com_error.log"
    await create(
        client,
        DOMAINS,
        {
            "name": "api.example.com",
            "ports": [{"port": 443, "ssl": True}],
            "ssl_cert_path": "/etc/ssl/api.pem",
            "ssl_key_path": "/etc/ssl/api.key",
        },
    )
    is_error(
        await client.post(DOMAINS, json={"name": "shop.example.com", "ports": [{"port": 80}]}),
        409,
        "already_exists",
        "name",
    )
    assert [d["name"] for d in (await client.get(DOMAINS)).json()] == ["api.example.com", "shop.example.com"]
    response = await client.get(f"{DOMAINS}/shop.example.com")
    assert response.status_code == 200
    assert response.json() == created
    is_error(await client.get(f"{DOMAINS}/nope.example.com"), 404, "not_found", "name")

    patch = {"ports": [{"port": 80}, {"port": 8080}], "access_log_path": "/var/log/shop.log"}
    response = await client.patch(f"{DOMAINS}/shop.example.com", json=patch)
    assert response.status_code == 200, response.text
    assert response.json()["ports"] == [{"port": 80, "ssl": False}, {"port": 8080, "ssl": False}]
    assert response.json()["access_log_path"] == "/var/log/shop.log"
    is_error(
        await client.patch(f"{DOMAINS}/api.example.com", json={"ssl_cert_path": None}),
        400,
        "invalid",
        "ssl_cert_path",
    )

    assert (await client.delete(f"{DOMAINS}/shop.example.com")).status_code == 204
    is_error(await client.delete(f"{DOMAINS}/shop.example.com"), 404)


async def test_provisioning_crud(client: Client) -> None:
    await seed_tree(client)
    created = await create(client, PROVISIONING, {"hostname": "New1.example.com", "node": "corp.web"})
    assert (created["hostname"], created["path"]) == ("new1.example.com", "corp.web")
    assert created["created_at"] == FIXED_NOW.isoformat()
    is_error(
        await client.post(PROVISIONING, json={"hostname": "new1.example.com", "node": "corp.db"}),
        409,
        "already_exists",
        "hostname",
    )
    is_error(
        await client.post(PROVISIONING, json={"hostname": "x", "node": "nope"}), 404, "not_found", "node"
    )
    await create(client, PROVISIONING, {"hostname": "a1", "node": "corp.db"})
    listed = (await client.get(PROVISIONING)).json()
    assert [(r["hostname"], r["path"]) for r in listed] == [
        ("a1", "corp.db"),
        ("new1.example.com", "corp.web"),
    ]
    response = await client.get(f"{PROVISIONING}/NEW1.example.com")
    assert response.status_code == 200
    assert response.json() == created
    assert (await client.delete(f"{PROVISIONING}/new1.example.com")).status_code == 204
    is_error(await client.get(f"{PROVISIONING}/new1.example.com"), 404, "not_found", "hostname")
    is_error(await client.delete(f"{PROVISIONING}/new1.example.com"), 404)


# ---- events (the stream itself is covered elsewhere; here the refusals before it starts) --------------
async def test_events_refuse_bad_parameters(client: Client) -> None:
    is_error(await client.get("/api/v1/events", params={"kind": "bogus"}), 400, "invalid", "kind")
    is_error(await client.get("/api/v1/events", params={"since": -1}), 400, "invalid", "since")
    is_error(
        await client.get("/api/v1/events", headers={"Last-Event-ID": "abc"}), 400, "invalid", "Last-Event-ID"
    )


async def test_events_from_a_compacted_revision_is_410() -> None:
    store = MemoryStore(history=1)
    await store.open()
    inventory = Inventory(store, clock=lambda: FIXED_NOW, ids=Ids("id"))
    try:
        async with AsyncTestClient(app=create_app(inventory)) as client:
            for path in ("a", "b", "c"):
                await create(client, NODES, {"path": path})
            is_error(await client.get("/api/v1/events", params={"since": 0}), 410, "compacted", "since")
    finally:
        await store.close()


# ---- concurrent requests (the inventory the handlers call, without the HTTP round trip) --------------
async def test_concurrent_binds_of_both_kinds_to_an_empty_node_never_mix(inventory: Inventory) -> None:
    """Two requests whose plans are made before either commits (as group commit allows) must not mix."""
    await inventory.create_node(NodeCreate(path="corp"))
    await inventory.create_machine(MachineCreate(hostname="p1", machine_kind="physical"))
    await inventory.create_machine(MachineCreate(hostname="v1", machine_kind="virtual"))
    results = await asyncio.gather(
        inventory.bind("p1", BindRequest(node="corp")),
        inventory.bind("v1", BindRequest(node="corp")),
        return_exceptions=True,
    )
    assert sum(isinstance(r, BindingView) for r in results) == 1, results
    assert {m.machine_kind for m in inventory.machines(node="corp")} in ({"physical"}, {"virtual"})


async def test_concurrent_creates_of_one_path_make_one_node(inventory: Inventory) -> None:
    results = await asyncio.gather(
        *(inventory.create_node(NodeCreate(path="corp")) for _ in range(3)), return_exceptions=True
    )
    assert sum(isinstance(r, TreeNode) for r in results) == 1
    assert all(isinstance(r, TreeNode | AlreadyExists) for r in results), results
    assert [n.path for n in inventory.nodes()] == ["corp"]
