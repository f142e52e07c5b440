"""The gateway's API: the routing snapshot, gateway events, backend pins, health policies (with bad
input refused and nothing written), availability reports and the Prometheus text."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from treeherd.manager.inventory import Inventory
from treeherd.model.objects import DomainPort
from treeherd.model.requests import BindRequest, DomainCreate, MachineCreate, NodeCreate, RouteSpec
from treeherd.store.memory import MemoryStore

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture
async def routed(inventory: Inventory) -> Inventory:
    await inventory.create_node(NodeCreate(path="shop", port=8080))
    await inventory.create_domain(DomainCreate(name="shop.example.com", ports=[DomainPort(port=80)]))
    await inventory.add_route("shop", RouteSpec(domain="shop.example.com", uri="/"))
    await inventory.create_machine(MachineCreate(hostname="web-1", ips=["10.0.0.1"]))
    await inventory.create_machine(MachineCreate(hostname="idle", ips=["10.0.0.2"]))
    await inventory.bind("web-1", BindRequest(node="shop", weight=3))
    return inventory


async def test_snapshot_holds_every_routing_object(client: Client, routed: Inventory) -> None:
    answer = (await client.get("/api/v1/gateway/snapshot")).json()
    assert answer["revision"] == routed.store.revision
    assert [n["path"] for n in answer["nodes"]] == ["shop"]
    assert [b["weight"] for b in answer["bindings"]] == [3]
    assert [d["name"] for d in answer["domains"]] == ["shop.example.com"]


async def test_gateway_events_accumulate_on_its_record(client: Client) -> None:
    for index in range(60):
        response = await client.post(
            "/api/v1/gateways/edge/events",
            json={"type": "reload", "reason": f"reload {index}", "config_sha256": "ab"},
        )
        assert response.status_code == 201, response.text
    record = (await client.get("/api/v1/gateways/edge")).json()
    assert record["last_event"]["reason"] == "reload 59" and record["config_sha256"] == "ab"
    assert len(record["recent"]) == 50 and record["recent"][0]["reason"] == "reload 10"
    assert (await client.get("/api/v1/gateways/other")).status_code == 404


async def test_pins_need_a_bound_machine(client: Client, routed: Inventory) -> None:
    pinned = await client.put("/api/v1/backends/shop/web-1", json={"pin": "out"})
    assert pinned.status_code == 200 and pinned.json()["pin"] == "out"
    cleared = await client.put("/api/v1/backends/shop/web-1", json={"pin": None})
    assert cleared.json()["pin"] is None
    revision = routed.store.revision
    refused = await client.put("/api/v1/backends/shop/idle", json={"pin": "in"})
    assert refused.status_code == 404 and "not bound" in refused.json()["detail"]
    assert (await client.put("/api/v1/backends/shop/web-1", json={"pin": "sideways"})).status_code == 400
    assert routed.store.revision == revision


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"alert_below": 1.5}, "alert_below"),
        ({"eject_cap": -0.1}, "eject_cap"),
        ({"alert_min_requests": 0}, "alert_min_requests"),
        ({"webhook": "ftp://x"}, "webhook"),
        ({"webhook": "https://hooks.example.com/x"}, "webhook"),
        ({"alert_window": "2m"}, None),
    ],
)
async def test_bad_policies_are_refused(
    client: Client, routed: Inventory, body: dict[str, Any], field: str | None
) -> None:
    store = routed.store
    assert isinstance(store, MemoryStore)
    revision = store.revision
    response = await client.put("/api/v1/policies/shop", json=body)
    assert response.status_code == 400, response.text
    if field is not None:
        assert response.json()["field"] == field
    assert store.revision == revision


async def test_policy_set_merge_and_remove(client: Client, routed: Inventory) -> None:
    first = await client.put(
        "/api/v1/policies/shop", json={"alert_below": 0.99, "webhook": "http://127.0.0.1:9/h"}
    )
    assert first.status_code == 200
    second = (await client.put("/api/v1/policies/shop", json={"eject_cap": 0.5})).json()
    assert second["alert_below"] == 0.99 and second["eject_cap"] == 0.5
    assert (await client.delete("/api/v1/policies/shop")).status_code == 204
    assert (await client.delete("/api/v1/policies/shop")).status_code == 404


async def test_availability_reports_and_metrics(client: Client) -> None:
    stats = {"requests": 10, "errors": 1, "availability": 0.9, "p50_ms": 3.0, "p90_ms": 9.0, "p99_ms": 20.0}
    report = {
        "gateway": "edge",
        "at": "2026-01-01T00:00:00Z",
        "services": [
            {
                "node_id": "n1",
                "path": "shop.api",
                "windows": {"1m": stats},
                "backends": [{"address": "10.0.0.1:80", "hostname": "web-1", "windows": {"1m": stats}}],
                "alert": "shop.api: availability 0.9 is under 0.99",
            },
            {"node_id": "n2", "path": "other", "windows": {}},
        ],
    }
    assert (await client.put("/api/v1/availability/edge", json=report)).status_code == 204
    mismatch = await client.put("/api/v1/availability/other", json=report)
    assert mismatch.status_code == 409  # the URL and the body name different gateways
    answer = (await client.get("/api/v1/availability", params={"path": "shop"})).json()
    assert [s["path"] for s in answer[0]["services"]] == ["shop.api"] and answer[0]["stale"] is False
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'treeherd_service_availability{gateway="edge",path="shop.api",window="1m"} 0.9' in text
    assert (
        'treeherd_backend_requests{gateway="edge",path="shop.api",backend="10.0.0.1:80",hostname="web-1",window="1m"} 10'
        in text
    )
    assert (
        'treeherd_service_latency_ms{gateway="edge",path="shop.api",window="1m",quantile="0.99"} 20' in text
    )
    assert 'treeherd_alert_firing{gateway="edge",path="shop.api"} 1' in text
    assert "# TYPE treeherd_store_revision gauge" in text


async def test_routes_write_with_the_inventorys_clock_and_ids(client: Client, routed: Inventory) -> None:
    """The fixture's inventory has a fixed clock and ids "id-N": every write of these routes carries them."""
    written = [
        (await client.patch("/api/v1/cluster", json={"task_history": 3})).json(),
        (await client.post("/api/v1/gateways/edge/events", json={"type": "reload", "reason": "r"})).json(),
        (await client.put("/api/v1/backends/shop/web-1", json={"pin": "out"})).json(),
        (await client.put("/api/v1/policies/shop", json={"eject_cap": 0.5})).json(),
        (
            await client.post(
                "/api/v1/services", json={"name": "api", "node": "shop", "task": {"command": ["x"]}}
            )
        ).json(),
    ]
    assert [(w["created_at"], w["updated_at"]) for w in written] == [("2026-01-01T00:00:00Z",) * 2] * 5
    assert all(w["id"].startswith("id-") for w in written), [w["id"] for w in written]
    assert (await client.get("/api/v1/cluster")).json()["updated_at"] == "2026-01-01T00:00:00Z"
