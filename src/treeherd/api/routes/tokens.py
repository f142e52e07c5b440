"""/api/v1/tokens: bearer tokens for people and scripts (administrators only).

A token's full text is in the answer to its creation and nowhere else: the store keeps only the
digest of its secret.
"""

from __future__ import annotations

import secrets

from litestar import Controller, delete, get, post
from litestar.status_codes import HTTP_204_NO_CONTENT

from treeherd.core.security.api_tokens import SECRET_BYTES, plan_create_token, plan_delete_token
from treeherd.core.view import View
from treeherd.manager.inventory import Inventory
from treeherd.model.ops import Op
from treeherd.model.security import ApiToken, TokenCreate, TokenCreated, TokenInfo


class TokenController(Controller):
    path = "/api/v1/tokens"
    tags = ["tokens"]

    @get("/", summary="Every token: name, role, creation and expiry (never the secret)")
    async def list_tokens(self, inventory: Inventory) -> list[TokenInfo]:
        return [
            TokenInfo(name=t.name, role=t.role, created_at=t.created_at, expires_at=t.expires_at)
            for t in sorted(inventory.view.all(ApiToken), key=lambda t: t.name)
        ]

    @post("/", summary="Make a token; its text is shown in this answer only")
    async def create_token(self, inventory: Inventory, data: TokenCreate) -> TokenCreated:
        made: list[str] = []

        def plan(view: View) -> list[Op]:
            ops, text = plan_create_token(
                view, data, inventory.clock(), inventory.ids, secrets.token_bytes(SECRET_BYTES)
            )
            made.append(text)
            return ops

        committed = await inventory.apply(plan)
        token = committed.objects[0]
        assert isinstance(token, ApiToken)
        return TokenCreated(name=token.name, role=token.role, token=made[-1], expires_at=token.expires_at)

    @delete(
        "/{name:str}",
        summary="Remove a token: it is refused from the next request on",
        status_code=HTTP_204_NO_CONTENT,
    )
    async def delete_token(self, inventory: Inventory, name: str) -> None:
        await inventory.apply(lambda view: plan_delete_token(view, name))
