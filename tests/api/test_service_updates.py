"""Update policies through the API: set on create, changed by PATCH, shown by GET; out-of-range values
and a rollback with nothing to return to are refused with the field, and nothing is written."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from treeherd.manager.inventory import Inventory
from treeherd.model.requests import NodeCreate
from treeherd.store.memory import MemoryStore

Client = AsyncTestClient  # type: ignore[type-arg]
SERVICES = "/api/v1/services"


def snapshot(store: MemoryStore) -> tuple[int, bytes]:
    objects = sorted(store.view().objects(), key=lambda o: (o.kind, o.id))  # type: ignore[attr-defined]
    return store.revision, msgspec.msgpack.encode(objects)


@pytest.fixture
async def web(client: Client, inventory: Inventory) -> dict[str, Any]:
    await inventory.create_node(NodeCreate(path="corp"))
    response = await client.post(
        SERVICES,
        json={
            "name": "web",
            "node": "corp",
            "replicas": 4,
            "task": {"command": ["serve"]},
            "update": {"parallelism": 2, "order": "start-first", "failure_action": "rollback"},
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_policies_are_stored_shown_and_changed(client: Client, web: dict[str, Any]) -> None:
    assert web["update"] == {
        "parallelism": 2,
        "delay_s": 0.0,
        "order": "start-first",
        "monitor_s": 5.0,
        "failure_action": "rollback",
        "max_failure_ratio": 0.0,
    }
    assert web["rollback"]["parallelism"] == 1 and web["update_status"] is None

    response = await client.patch(f"{SERVICES}/web", json={"rollback": {"parallelism": 0, "delay_s": 2}})
    assert response.status_code == 200, response.text
    shown = (await client.get(f"{SERVICES}/web")).json()["service"]
    assert shown["rollback"]["parallelism"] == 0 and shown["rollback"]["delay_s"] == 2
    assert shown["update"]["parallelism"] == 2  # untouched
    assert shown["spec_version"] == 1 and shown["update_status"] is None  # no task changes


async def test_a_new_spec_starts_an_update_and_rollback_swaps_back(
    client: Client, web: dict[str, Any]
) -> None:
    response = await client.patch(f"{SERVICES}/web", json={"task": {"command": ["serve", "--v2"]}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["spec_version"] == 2 and body["previous_task"]["command"] == ["serve"]
    assert body["update_status"]["state"] == "updating" and body["update_status"]["started_at"]

    response = await client.post(f"{SERVICES}/web/rollback")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"]["command"] == ["serve"] and body["previous_task"]["command"] == ["serve", "--v2"]
    assert body["spec_version"] == 3 and body["update_status"]["state"] == "rollback_started"


async def test_force_replaces_without_a_spec_change(client: Client, web: dict[str, Any]) -> None:
    response = await client.patch(f"{SERVICES}/web", json={"force": True})
    body = response.json()
    assert response.status_code == 200, response.text
    assert body["spec_version"] == 2 and body["task"]["force_update"] == 1
    assert body["update_status"]["state"] == "updating"


BAD = [
    ({"update": {"parallelism": -1}}, "update.parallelism"),
    ({"update": {"max_failure_ratio": 1.5}}, "update.max_failure_ratio"),
    ({"rollback": {"max_failure_ratio": -0.1}}, "rollback.max_failure_ratio"),
    ({"update": {"monitor_s": -1}}, "update.monitor_s"),
    ({"update": {"delay_s": -5}}, "update.delay_s"),
    ({"update": {"order": "sideways"}}, "update.order"),
    ({"update": {"failure_action": "explode"}}, "update.failure_action"),
    ({"update": {"parallelism": 1, "wat": 1}}, "update.wat"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f for _, f in BAD])
async def test_out_of_range_policies_are_refused_with_the_field(
    client: Client, store: MemoryStore, web: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    before = snapshot(store)
    response = await client.patch(f"{SERVICES}/web", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field and error["detail"], error
    assert snapshot(store) == before


async def test_out_of_range_policy_on_create_is_refused(client: Client, store: MemoryStore, web: Any) -> None:
    before = snapshot(store)
    response = await client.post(
        SERVICES,
        json={"name": "api", "node": "corp", "task": {"command": ["x"]}, "rollback": {"parallelism": -2}},
    )
    assert response.status_code == 400 and response.json()["field"] == "rollback.parallelism", response.text
    assert snapshot(store) == before


async def test_rollback_with_nothing_to_roll_back_to(client: Client, store: MemoryStore, web: Any) -> None:
    before = snapshot(store)
    response = await client.post(f"{SERVICES}/web/rollback")
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == "name" and "no previous spec" in error["detail"], error
    missing = await client.post(f"{SERVICES}/nope/rollback")
    assert missing.status_code == 404 and missing.json()["field"] == "name"
    assert snapshot(store) == before


async def test_on_node_down_is_stored_and_changed_without_replacing_tasks(
    client: Client, store: MemoryStore, web: dict[str, Any]
) -> None:
    assert web["on_node_down"] == "replace"
    response = await client.patch(f"{SERVICES}/web", json={"on_node_down": "wait"})
    assert response.status_code == 200, response.text
    shown = (await client.get(f"{SERVICES}/web")).json()["service"]
    assert shown["on_node_down"] == "wait"
    assert shown["spec_version"] == 1 and shown["update_status"] is None  # decides later: no redeploy

    before = snapshot(store)
    refused = await client.patch(f"{SERVICES}/web", json={"on_node_down": "sometimes"})
    assert refused.status_code == 400 and refused.json()["field"] == "on_node_down", refused.text
    assert snapshot(store) == before
