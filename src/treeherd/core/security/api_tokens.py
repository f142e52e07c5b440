"""Bearer tokens: their text, their creation and removal as plans, and the check of a presented one.

A token reads `thd1_<token id>_<secret>`: the id finds the stored record at once, the secret (256
random bits, from the caller) is compared by its SHA-256 in constant time. Every refusal says the same
thing, so a caller with a wrong token learns nothing about which part was wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from treeherd.core.view import View
from treeherd.model.errors import AlreadyExists, InvalidInput, NotFound, Unauthenticated
from treeherd.model.ops import Create, Delete, Op
from treeherd.model.security import MAX_TOKEN_LIFETIME_S, TOKEN_NAME_PATTERN, ApiToken, TokenCreate

PREFIX = "thd1"
SECRET_BYTES = 32
_NAME = re.compile(TOKEN_NAME_PATTERN)
_TOKEN = re.compile(r"^thd1_([A-Za-z0-9.-]{1,64})_([A-Za-z0-9_-]{43})$")


def refused() -> Unauthenticated:
    return Unauthenticated("authentication required: present a valid token (Authorization: Bearer ...)")


def _secret_text(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode()


def token_text(token_id: str, secret: bytes) -> str:
    return f"{PREFIX}_{token_id}_{_secret_text(secret)}"


def secret_digest(secret_text: str) -> str:
    return hashlib.sha256(secret_text.encode()).hexdigest()


def plan_create_token(
    view: View, request: TokenCreate, now: datetime, new_id: Callable[[], str], secret: bytes
) -> tuple[list[Op], str]:
    """The record of a new token and the token's full text (shown once)."""
    if not _NAME.match(request.name):
        raise InvalidInput(
            "a token name is 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            field="name",
        )
    if view.lookup(ApiToken, "name", request.name) is not None:
        raise AlreadyExists(
            f"a token named {request.name!r} exists: remove it first or pick another name", field="name"
        )
    expires_at = None
    if request.expires_in_s is not None:
        if not 0 < request.expires_in_s <= MAX_TOKEN_LIFETIME_S:
            raise InvalidInput("expires_in_s must be more than 0 and at most ten years", field="expires_in_s")
        expires_at = now + timedelta(seconds=request.expires_in_s)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a token secret is {SECRET_BYTES} bytes")
    token_id = new_id()
    text = token_text(token_id, secret)
    record = ApiToken(
        id=token_id,
        created_at=now,
        updated_at=now,
        name=request.name,
        role=request.role,
        secret_sha256=secret_digest(_secret_text(secret)),
        expires_at=expires_at,
    )
    return [Create(record)], text


def plan_delete_token(view: View, name: str) -> list[Op]:
    found = view.lookup(ApiToken, "name", name)
    if found is None:
        raise NotFound(f"no token named {name!r}: `treeherd token ls` lists them", field="name")
    return [Delete(found)]


def check_token(view: View, presented: str, now: datetime) -> ApiToken:
    """The stored token a presented text stands for, if it is valid now; else Unauthenticated."""
    match = _TOKEN.match(presented.strip())
    if match is None:
        raise refused()
    stored = view.get(ApiToken, match.group(1))
    digest = secret_digest(match.group(2))
    if stored is None:
        hmac.compare_digest(digest, digest)  # the same work as a found token: no timing hint
        raise refused()
    if not hmac.compare_digest(stored.secret_sha256, digest):
        raise refused()
    if stored.expires_at is not None and now >= stored.expires_at:
        raise refused()
    return stored
