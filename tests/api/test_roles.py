"""Every operation of /openapi.json, called with every role: allowed or refused as its declared scope says.

The app is built with authentication required, one token per role is made through the store, and each
operation is called with a placeholder path and an empty body: an allowed call may fail validation or
find nothing (400, 404, 409...), but only a refused one answers 401 or 403.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from litestar.testing import AsyncTestClient

from treeherd.api.access import SCOPES, WEBSOCKET
from treeherd.api.app import create_app
from treeherd.core.security.api_tokens import plan_create_token
from treeherd.core.security.roles import ROLES_FOR_SCOPE, Scope
from treeherd.manager.inventory import Inventory
from treeherd.model.security import Role, TokenCreate
from treeherd.testing.factories import FIXED_NOW

Client = AsyncTestClient  # type: ignore[type-arg]


async def make_token(inventory: Inventory, name: str, role: Role, expires_in_s: float | None = None) -> str:
    texts: list[str] = []

    def plan(view):  # type: ignore[no-untyped-def]
        ops, text = plan_create_token(
            view,
            TokenCreate(name=name, role=role, expires_in_s=expires_in_s),
            FIXED_NOW,
            inventory.ids,
            secrets.token_bytes(32),
        )
        texts.append(text)
        return ops

    await inventory.apply(plan)
    return texts[-1]


@pytest.fixture
async def secured(inventory: Inventory) -> AsyncIterator[tuple[Client, dict[Role, str]]]:
    tokens = {role: await make_token(inventory, f"t-{role.value}", role) for role in Role}
    async with AsyncTestClient(app=create_app(inventory, require_auth=True)) as opened:
        yield opened, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_operation_admits_exactly_the_roles_it_declares(
    secured: tuple[Client, dict[Role, str]],
) -> None:
    client, tokens = secured
    document = (await client.get("/openapi.json")).json()
    checked = 0
    for path, item in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            roles = set(operation["x-treeherd-roles"])
            if method != "get" and operation["x-treeherd-scope"] != "public":  # a join proves itself
                assert "viewer" not in roles, (method, path)
            assert roles == {r.value for r in ROLES_FOR_SCOPE[Scope(operation["x-treeherd-scope"])]}
            for role, token in tokens.items():
                kwargs = {"json": {}} if method in ("post", "put", "patch") else {}
                if path == "/api/v1/events":
                    kwargs["params"] = {"kind": "no-such-kind"}  # answered at once, not streamed
                answer = await client.request(method.upper(), concrete, headers=bearer(token), **kwargs)
                refused = answer.status_code in (401, 403)
                assert refused == (role.value not in roles), (
                    method,
                    path,
                    role,
                    answer.status_code,
                    answer.text,
                )
                if refused:
                    assert answer.status_code == 403
                    assert answer.json()["error"] == "forbidden"
                checked += 1
            if operation["x-treeherd-scope"] != "public":
                anonymous = await client.request(method.upper(), concrete)
                assert anonymous.status_code == 401, (method, path)
    assert checked >= 60 * len(Role)


def test_the_table_names_only_known_scopes_and_every_scope_is_used() -> None:
    assert set(SCOPES.values()) == set(Scope)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer thd1_00_" + "A" * 43],
)
async def test_a_missing_or_malformed_credential_is_401_with_nothing_internal(
    secured: tuple[Client, dict[Role, str]], header: str
) -> None:
    client, _ = secured
    answer = await client.get("/api/v1/nodes", headers={"Authorization": header} if header else {})
    assert answer.status_code == 401
    assert (
        answer.json()["detail"]
        == "authentication required: present a valid token (Authorization: Bearer ...)"
    )


async def test_a_removed_token_is_refused_at_once(secured: tuple[Client, dict[Role, str]]) -> None:
    client, tokens = secured
    admin = bearer(tokens[Role.ADMIN])
    made = (await client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin)).json()
    assert made["token"].startswith("thd1_")
    assert (await client.get("/api/v1/nodes", headers=bearer(made["token"]))).status_code == 200
    listed = (await client.get("/api/v1/tokens", headers=admin)).json()
    assert {t["name"] for t in listed} >= {"ci", "t-admin"}
    assert all("secret" not in str(t) and "token" not in t for t in listed)
    assert (await client.delete("/api/v1/tokens/ci", headers=admin)).status_code == 204
    assert (await client.get("/api/v1/nodes", headers=bearer(made["token"]))).status_code == 401


async def test_an_expired_token_is_refused(inventory: Inventory) -> None:
    token = await make_token(inventory, "short", Role.VIEWER, expires_in_s=60)
    later = Inventory(inventory.store, clock=lambda: FIXED_NOW + timedelta(seconds=61))
    async with AsyncTestClient(app=create_app(later, require_auth=True)) as client:
        assert (await client.get("/api/v1/nodes", headers=bearer(token))).status_code == 401


async def test_a_token_that_expires_while_in_use_is_refused_from_then_on(inventory: Inventory) -> None:
    token = await make_token(inventory, "short", Role.VIEWER, expires_in_s=60)
    now = [FIXED_NOW]
    ticking = Inventory(inventory.store, clock=lambda: now[0])
    async with AsyncTestClient(app=create_app(ticking, require_auth=True)) as client:
        for _ in range(2):  # the second request is answered from the checked tokens
            assert (await client.get("/api/v1/nodes", headers=bearer(token))).status_code == 200
        now[0] = FIXED_NOW + timedelta(seconds=60)
        assert (await client.get("/api/v1/nodes", headers=bearer(token))).status_code == 401


async def test_a_refusal_is_audited_without_the_token(
    secured: tuple[Client, dict[Role, str]], caplog: pytest.LogCaptureFixture
) -> None:
    client, tokens = secured
    with caplog.at_level(logging.WARNING, logger="treeherd.audit"):
        await client.post("/api/v1/nodes", json={}, headers=bearer(tokens[Role.VIEWER]))
        await client.get("/api/v1/nodes", headers=bearer("thd1_ff_" + "B" * 43))
    lines = [r.getMessage() for r in caplog.records if r.name == "treeherd.audit"]
    assert any(
        "POST /api/v1/nodes" in line and "(t-viewer): the role viewer may not" in line for line in lines
    )
    assert any("GET /api/v1/nodes" in line and "no valid credential" in line for line in lines)
    assert not any(tokens[Role.VIEWER] in line or "B" * 43 in line for line in lines)


async def test_token_requests_are_checked(secured: tuple[Client, dict[Role, str]]) -> None:
    client, tokens = secured
    admin = bearer(tokens[Role.ADMIN])
    bad_name = await client.post("/api/v1/tokens", json={"name": "Bad Name", "role": "viewer"}, headers=admin)
    assert bad_name.status_code == 400 and bad_name.json()["field"] == "name"
    bad_role = await client.post("/api/v1/tokens", json={"name": "x", "role": "root"}, headers=admin)
    assert bad_role.status_code == 400
    again = await client.post("/api/v1/tokens", json={"name": "t-admin", "role": "viewer"}, headers=admin)
    assert again.status_code == 409
    assert (await client.delete("/api/v1/tokens/nope", headers=admin)).status_code == 404


async def test_without_authentication_every_caller_is_an_administrator(client: Client) -> None:
    assert (await client.get("/api/v1/tokens")).status_code == 200


def test_the_agent_channel_declares_the_session_scope() -> None:
    assert SCOPES[(WEBSOCKET, "/api/v1/agent")] is Scope.SESSION
