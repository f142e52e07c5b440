"""Canaries through the API: `PATCH` with a canary starts one (state `canary`, its size and policy on
the update status), promote and abort end it; a canary that cannot be (larger than the replicas, on a
global service, without a change of spec, out-of-range settings) and a promote or abort with no canary
are refused with the field, and nothing is written. The availability report gains the backends grouped
by the spec version of their task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tests.api.test_service_updates import SERVICES, Client, snapshot

from treeherd.manager.inventory import Inventory
from treeherd.model.discovery import Endpoint
from treeherd.model.ops import Create
from treeherd.model.requests import NodeCreate
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.store.memory import MemoryStore

NEW_TASK = {"command": ["serve"], "env": {"V": "2"}}


@pytest.fixture
async def web(client: Client, inventory: Inventory) -> dict[str, Any]:
    await inventory.create_node(NodeCreate(path="corp"))
    response = await client.post(
        SERVICES, json={"name": "web", "node": "corp", "replicas": 4, "task": {"command": ["serve"]}}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_canary_starts_and_is_promoted(client: Client, web: dict[str, Any]) -> None:
    response = await client.patch(
        f"{SERVICES}/web",
        json={"task": NEW_TASK, "canary": {"percent": 25, "window_s": 30, "auto_promote": True}},
    )
    assert response.status_code == 200, response.text
    status = response.json()["update_status"]
    assert status["state"] == "canary" and status["canary"]["tasks"] == 1
    assert status["canary"]["policy"] == {
        "tasks": 0,
        "percent": 25.0,
        "window_s": 30.0,
        "margin": 0.5,
        "min_requests": 100,
        "latency_factor": 1.5,
        "auto_promote": True,
    }
    shown = (await client.get(f"{SERVICES}/web")).json()["service"]
    assert shown["update_status"]["state"] == "canary" and shown["spec_version"] == 2
    promoted = await client.post(f"{SERVICES}/web/promote")
    assert promoted.status_code == 200, promoted.text
    status = promoted.json()["update_status"]
    assert status["state"] == "updating" and status["canary"]["verdict"] == "promoted: by hand"
    again = await client.post(f"{SERVICES}/web/promote")
    assert again.status_code == 400 and "no canary" in again.json()["detail"]


async def test_an_aborted_canary_returns_to_the_old_spec(client: Client, web: dict[str, Any]) -> None:
    await client.patch(f"{SERVICES}/web", json={"task": NEW_TASK, "canary": {"tasks": 2}})
    response = await client.post(f"{SERVICES}/web/abort")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["task"]["env"] == {} and body["previous_task"]["env"] == {"V": "2"} and body["spec_version"] == 3
    )
    assert body["update_status"]["state"] == "rollback_started"
    assert body["update_status"]["message"] == "canary aborted: by hand"


BAD = [
    ({"task": NEW_TASK, "canary": {"tasks": 5}}, "canary.tasks", "leaves no task"),
    ({"task": NEW_TASK, "canary": {"tasks": 4}}, "canary.tasks", "leaves no task"),
    ({"task": NEW_TASK, "canary": {"percent": 100}}, "canary.percent", "leaves no task"),
    ({"task": NEW_TASK, "replicas": 1, "canary": {"tasks": 1}}, "canary.tasks", "leaves no task"),
    ({"task": NEW_TASK, "canary": {}}, "canary", "number of tasks or as a percentage"),
    ({"canary": {"tasks": 1}}, "canary", "needs a change of the task spec"),
    ({"task": NEW_TASK, "canary": {"tasks": -1}}, "canary.tasks", ""),
    ({"task": NEW_TASK, "canary": {"tasks": 1, "margin": -1}}, "canary.margin", ""),
    ({"task": NEW_TASK, "canary": {"tasks": 1, "window_s": 0}}, "canary.window_s", ""),
    ({"task": NEW_TASK, "canary": {"tasks": 1, "latency_factor": 0.5}}, "canary.latency_factor", ""),
    ({"task": NEW_TASK, "canary": {"tasks": 1, "min_requests": 0}}, "canary.min_requests", ""),
    ({"task": NEW_TASK, "canary": {"tasks": 1, "wat": 1}}, "canary.wat", ""),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD)])
async def test_canaries_that_cannot_be_are_refused(
    client: Client,
    store: MemoryStore,
    web: dict[str, Any],
    body: dict[str, Any],
    field: str,
    words: str,
) -> None:
    before = snapshot(store)
    response = await client.patch(f"{SERVICES}/web", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field and words in error["detail"], error
    assert snapshot(store) == before


async def test_a_canary_on_a_global_service_is_refused(client: Client, store: MemoryStore, web: Any) -> None:
    created = await client.post(
        SERVICES, json={"name": "agentd", "node": "corp", "mode": "global", "task": {"command": ["x"]}}
    )
    assert created.status_code == 201, created.text
    before = snapshot(store)
    response = await client.patch(
        f"{SERVICES}/agentd", json={"task": {"command": ["y"]}, "canary": {"tasks": 1}}
    )
    assert response.status_code == 400 and "is global" in response.json()["detail"], response.text
    assert snapshot(store) == before


async def test_promote_and_abort_with_no_canary_are_refused(
    client: Client, store: MemoryStore, web: Any
) -> None:
    before = snapshot(store)
    for action in ("promote", "abort"):
        response = await client.post(f"{SERVICES}/web/{action}")
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["field"] == "name" and "no canary to act on (it was never updated)" in error["detail"]
        missing = await client.post(f"{SERVICES}/nope/{action}")
        assert missing.status_code == 404 and missing.json()["field"] == "name"
    await client.patch(f"{SERVICES}/web", json={"task": NEW_TASK})  # a plain update: no canary either
    during = snapshot(store)
    response = await client.post(f"{SERVICES}/web/abort")
    assert response.status_code == 400 and "its update is updating" in response.json()["detail"]
    assert snapshot(store) == during and during != before


async def test_availability_groups_backends_by_the_version_of_their_task(
    client: Client,
    store: MemoryStore,
    inventory: Inventory,
    web: dict[str, Any],
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ops = []
    for n, version in ((1, 1), (2, 1), (3, 2)):
        task = Task(
            id=f"t{n}",
            created_at=now,
            updated_at=now,
            service_id=web["id"],
            service_name="web",
            slot=n,
            status=TaskStatus(timestamp=now),
            spec=TaskSpec(command=["serve"]),
            spec_version=version,
        )
        endpoint = Endpoint(
            id=f"e{n}",
            created_at=now,
            updated_at=now,
            service="web",
            address="10.0.0.1",
            port=8000 + n,
            source="task",
            task_id=f"t{n}",
        )
        ops += [Create(task), Create(endpoint)]
    await store.commit(ops)

    def backend(port: int, requests: int, errors: int) -> dict[str, Any]:
        histogram = [0] * 16
        histogram[2] = requests
        stats = {"requests": requests, "errors": errors, "availability": (requests - errors) / requests}
        return {"address": f"10.0.0.1:{port}", "windows": {"1m": stats}, "histograms": {"1m": histogram}}

    report = {
        "gateway": "edge",
        "at": now.isoformat(),
        "services": [
            {
                "node_id": web["node_id"],
                "path": "corp",
                "backends": [backend(8001, 100, 0), backend(8002, 100, 0), backend(8003, 50, 10)],
            }
        ],
    }
    assert (await client.put("/api/v1/availability/edge", json=report)).status_code == 204
    shown = (await client.get("/api/v1/availability")).json()
    versions = shown[0]["services"][0]["versions"]
    assert [(v["spec_version"], v["backends"], v["windows"]["1m"]["requests"]) for v in versions] == [
        (1, 2, 200),
        (2, 1, 50),
    ]
    assert versions[1]["windows"]["1m"]["availability"] == 0.8 and not versions[1]["canary"]
