"""Every refused authentication and authorisation is an audit event: a missing or wrong token (401), a
role that may not (403), a refused join. Each names the caller's address, what was asked and why, is an
update of the `audit` object in the event stream, and never holds the secret presented; a flood of
refusals costs one write per flush."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from tests.api.test_join import csr
from tests.api.test_roles import bearer, make_token

from treeherd.api.app import create_app
from treeherd.core.security.audit import AUDIT_LOG_NAME, KEEP
from treeherd.core.security.join_tokens import make_join_token
from treeherd.manager.audit_trail import AuditTrail
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.inventory import Inventory
from treeherd.model.security import AuditLog, Role
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture
async def audited(inventory: Inventory, tmp_path: Path) -> AsyncIterator[tuple[Client, AuditTrail]]:
    trail = AuditTrail(inventory, flush_s=0.01)
    running = asyncio.create_task(trail.run())
    authority = ClusterAuthority.open(tmp_path / "data", FIXED_NOW)
    app = create_app(inventory, require_auth=True, authority=authority, refusals=trail.refused)
    try:
        async with AsyncTestClient(app=app) as client:
            yield client, trail
    finally:
        trail.stop()
        async with asyncio.timeout(5):
            await running


def audit_log(inventory: Inventory) -> AuditLog:
    found = inventory.view.lookup(AuditLog, "name", AUDIT_LOG_NAME)
    assert found is not None
    return found


async def test_refusals_are_audit_events_with_address_and_reason_and_no_secret(
    audited: tuple[Client, AuditTrail], inventory: Inventory, store: MemoryStore
) -> None:
    client, trail = audited
    viewer = await make_token(inventory, "look", Role.VIEWER)
    wrong = "thd1_" + "0" * 16 + "_" + secrets.token_urlsafe(32)
    join_secret = str(make_join_token(bytes(32), bytes(16)))

    assert (await client.get("/api/v1/nodes")).status_code == 401
    assert (await client.get("/api/v1/nodes", headers=bearer(wrong))).status_code == 401
    assert (await client.post("/api/v1/nodes", json={"path": "x"}, headers=bearer(viewer))).status_code == 403
    joined = await client.post("/api/v1/join", json={"join_token": join_secret, "csr_pem": csr()})
    assert joined.status_code == 401
    await trail.flush()

    log = audit_log(inventory)
    assert [(r.what, r.reason, r.caller) for r in log.recent] == [
        ("GET /api/v1/nodes", "no valid credential", None),
        ("GET /api/v1/nodes", "no valid credential", None),
        ("POST /api/v1/nodes", "the role viewer may not", "look"),
        ("POST /api/v1/join", "unauthenticated", None),
    ]
    assert all(r.address == "testclient" and r.at == FIXED_NOW for r in log.recent)
    assert log.refused_total == 4
    recorded = msgspec.json.encode(log).decode()
    # A token is `thd1_<id>_<secret>` and the secret itself may hold "_": split off the first two parts.
    for secret in (viewer, wrong, join_secret, wrong.split("_", 2)[2], viewer.split("_", 2)[2]):
        assert secret not in recorded

    # In the event stream: the audit log's creation and updates are events of kind `audit`.
    audit_events = [
        event for change in store.history(0) for event in change.events if event.object.kind == "audit"
    ]
    assert audit_events and audit_events[-1].object == log


async def test_a_flood_of_refusals_is_bounded(inventory: Inventory) -> None:
    trail = AuditTrail(inventory, flush_s=0.01, max_pending=10)
    for n in range(25):
        trail.refused(address=f"10.0.0.{n}", what="GET /api/v1/nodes", reason="no valid credential")
    await trail.flush()
    log = audit_log(inventory)
    assert len(log.recent) == 10 and log.refused_total == 25 and log.dropped_total == 15
    for _ in range(KEEP):
        trail.refused(address="10.0.0.1", what="GET /", reason="r")
        await trail.flush()
    log = audit_log(inventory)
    assert len(log.recent) == KEEP and log.refused_total == 25 + KEEP


def test_only_administrators_see_tokens_in_the_event_stream(tmp_path: Path) -> None:
    from treeherd.testing.processes import ManagerProcess
    from treeherd.transport.client import Client

    def kinds_seen(url: str, token: str) -> set[str]:
        seen: set[str] = set()
        with Client(url, token=token, timeout=10) as client:
            query = {"since": 0, "keepalive": 0.2}
            for event, data, _ in client.stream("/api/v1/events", query, read_timeout=10):
                if event == "progress":
                    continue
                seen.add(msgspec.json.decode(data)["object"]["kind"])
                if "node" in seen:  # the last change made, after the tokens
                    return seen
        return seen

    with ManagerProcess(tmp_path / "data", extra_args=("--require-auth",)) as manager:
        admin = (tmp_path / "data" / "secrets" / "admin.token").read_text().strip()
        with Client(manager.url, token=admin, timeout=10) as client:
            viewer = client.request("POST", "/api/v1/tokens", {"name": "look", "role": "viewer"})["token"]
            gateway = client.request("POST", "/api/v1/tokens", {"name": "edge", "role": "gateway"})["token"]
            client.request("POST", "/api/v1/nodes", {"path": "corp"})
        assert {"token", "node"} <= kinds_seen(manager.url, admin)
        for other in (viewer, gateway):
            seen = kinds_seen(manager.url, other)
            assert "node" in seen and "token" not in seen
