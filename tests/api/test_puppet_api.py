"""The Puppet endpoints in-process: catalog sync and listing, ENC answers, conflict records, reports, and
bad requests that get a 4xx and write nothing."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from treeherd.store.memory import MemoryStore

Client = AsyncTestClient  # type: ignore[type-arg]

CATALOG = {
    "classes": [
        {"name": "base"},
        {
            "name": "profile::web",
            "parent": "base",
            "params": [{"name": "workers", "type": "Integer", "default": "4"}],
        },
        {"name": "profile::db"},
    ],
    "source": "test",
}


def snapshot(store: MemoryStore) -> tuple[int, bytes]:
    objects = sorted(store.view().objects(), key=lambda o: (o.kind, o.id))  # type: ignore[attr-defined]
    return store.revision, msgspec.msgpack.encode(objects)


async def _ok(client: Client, method: str, url: str, body: Any = None) -> Any:
    response = await client.request(method, url, json=body)
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


@pytest.fixture
async def world(client: Client) -> Client:
    await _ok(client, "PUT", "/api/v1/puppet/classes", CATALOG)
    await _ok(client, "PATCH", "/api/v1/cluster", {"puppet_default_class": "base"})
    await _ok(
        client,
        "POST",
        "/api/v1/nodes",
        {"path": "corp", "puppet_classes": {"base": {}}, "puppet_environment": "production"},
    )
    await _ok(
        client,
        "POST",
        "/api/v1/nodes",
        {"path": "corp.web", "puppet_classes": {"profile::web": {"workers": 8}}},
    )
    await _ok(client, "POST", "/api/v1/nodes", {"path": "corp.db", "puppet_classes": {"profile::db": {}}})
    for host in ("web-1", "both-1"):
        await _ok(client, "POST", "/api/v1/machines", {"hostname": host, "labels": {"rack": "r1"}})
        await _ok(client, "POST", f"/api/v1/machines/{host}/bindings", {"node": "corp.web"})
    await _ok(client, "POST", "/api/v1/machines/both-1/bindings", {"node": "corp.db"})
    return client


async def test_catalog_listing_and_a_dry_run(world: Client) -> None:
    classes = await _ok(world, "GET", "/api/v1/puppet/classes")
    assert [c["name"] for c in classes] == ["base", "profile::db", "profile::web"]
    assert classes[2]["params"] == [{"name": "workers", "type": "Integer", "default": "4"}]
    dry = await _ok(
        world,
        "PUT",
        "/api/v1/puppet/classes",
        {**CATALOG, "classes": [*CATALOG["classes"], {"name": "extra"}], "dry_run": True},
    )
    assert dry["added"] == ["extra"] and dry["dry_run"] is True
    assert "extra" not in [c["name"] for c in await _ok(world, "GET", "/api/v1/puppet/classes")]


async def test_enc_answers_and_the_conflict_record(world: Client, store: MemoryStore) -> None:
    web = await _ok(world, "GET", "/api/v1/enc/web-1")
    assert web["classes"] == {"base": {}, "profile::web": {"workers": 8}}
    assert web["parameters"]["treeherd_labels"] == {"rack": "r1"}
    assert web["environment"] == "production"
    before = store.revision
    both = await _ok(world, "GET", "/api/v1/enc/both-1")
    assert both["source"] == "conflict" and both["classes"] == {"base": {}}
    [conflict] = await _ok(world, "GET", "/api/v1/puppet/conflicts")
    assert conflict["hostname"] == "both-1" and conflict["nodes"] == ["corp.db", "corp.web"]
    assert store.revision == before + 1
    await _ok(world, "GET", "/api/v1/enc/both-1")
    assert store.revision == before + 1  # the same conflict again writes nothing
    await _ok(world, "DELETE", "/api/v1/machines/both-1/bindings/corp.db")
    assert (await _ok(world, "GET", "/api/v1/enc/both-1"))["source"] == "bound"
    assert await _ok(world, "GET", "/api/v1/puppet/conflicts") == []


async def test_unknown_hosts(world: Client) -> None:
    response = await world.get("/api/v1/enc/ghost")
    assert response.status_code == 404
    assert "treeherd provision add ghost" in response.json()["detail"]
    answer = await _ok(world, "GET", "/api/v1/enc/ghost?unknown=default")
    assert answer["source"] == "default" and answer["classes"] == {"base": {}}
    await _ok(world, "PATCH", "/api/v1/cluster", {"puppet_unknown_host": "default"})
    assert (await _ok(world, "GET", "/api/v1/enc/ghost"))["source"] == "default"
    assert (await world.get("/api/v1/enc/ghost?unknown=fail")).status_code == 404


async def test_a_report_binds_the_provisioned_host_once(world: Client) -> None:
    await _ok(world, "POST", "/api/v1/provisioning", {"hostname": "new-1", "node": "corp.db"})
    assert (await _ok(world, "GET", "/api/v1/enc/new-1"))["source"] == "provisioning"
    report = {
        "hostname": "new-1",
        "ips": ["10.1.0.5"],
        "machine_kind": "virtual",
        "cpus": 4,
        "memory_bytes": 8 << 30,
    }
    first = await _ok(world, "POST", "/api/v1/machine-reports", report)
    assert (first["created"], first["changed"], first["bound"]) == (True, True, "corp.db")
    second = await _ok(world, "POST", "/api/v1/machine-reports", report)
    assert (second["created"], second["changed"], second["bound"]) == (False, False, None)
    assert await _ok(world, "GET", "/api/v1/provisioning") == []
    answer = await _ok(world, "GET", "/api/v1/enc/new-1")
    assert answer["source"] == "bound" and answer["parameters"]["treeherd_ips"] == ["10.1.0.5"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "detail"),
    [
        (
            "POST",
            "/api/v1/nodes",
            {"path": "corp.x", "puppet_classes": {"profile::nope": {}}},
            400,
            "not in the class catalog",
        ),
        (
            "PATCH",
            "/api/v1/nodes/corp.web",
            {"puppet_classes": {"profile::web": {"threads": 1}}},
            400,
            "declares no parameter 'threads'",
        ),
        ("PATCH", "/api/v1/cluster", {"puppet_default_class": "nope"}, 400, "not in the class catalog"),
        ("PATCH", "/api/v1/cluster", {"puppet_unknown_host": "maybe"}, 400, None),
        (
            "PUT",
            "/api/v1/puppet/classes",
            {"classes": [{"name": "base"}]},
            409,
            "corp.web (Puppet class 'profile::web'",
        ),
        ("PUT", "/api/v1/puppet/classes", {"classes": []}, 400, "has no classes"),
        ("PUT", "/api/v1/puppet/classes", {"classes": [{"name": "x", "bogus": 1}]}, 400, None),
        ("GET", "/api/v1/enc/bad%20host", None, 400, "invalid hostname"),
        ("GET", "/api/v1/enc/web-1?unknown=maybe", None, 400, None),
        ("POST", "/api/v1/machine-reports", {"hostname": "h", "ips": ["nope"]}, 400, "invalid IP address"),
        (
            "POST",
            "/api/v1/machine-reports",
            {"hostname": "web-1", "machine_kind": "physical"},
            409,
            "never mixed",
        ),
    ],
)
async def test_bad_requests_change_nothing(
    world: Client, store: MemoryStore, method: str, url: str, body: Any, status: int, detail: str | None
) -> None:
    before = snapshot(store)
    response = await world.request(method, url, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) >= {"error", "detail"}
    if detail is not None:
        assert detail in error["detail"]
    assert snapshot(store) == before
