"""Who is calling, and may they: bearer tokens checked against the store, roles against api/access.

With authentication off (the manager's default until every component presents credentials) every
caller is treated as an administrator. With it on, each request presents `Authorization: Bearer
<token>` (or, from the web console, the same token in the `treeherd_token` cookie its login page sets:
HttpOnly and SameSite=Strict, so no other site's page can send it); the operation's scope (api/access.SCOPES) must admit the token's role. A refusal answers
401 or 403 with nothing about which check failed, and is written to the audit log with the caller's
address (never the token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, cast

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from treeherd.api.access import WEBSOCKET, scope_of
from treeherd.core.security.api_tokens import check_token, refused
from treeherd.core.security.roles import Scope, allows
from treeherd.core.security.user_certs import user_cert_refusal
from treeherd.core.view import View
from treeherd.model.errors import Forbidden, Unauthenticated
from treeherd.model.security import ApiToken, Role
from treeherd.transport.pki import identity_of_der

audit = logging.getLogger("treeherd.audit")


class RefusalSink(Protocol):
    """Where a refusal goes (manager.audit_trail.AuditTrail.refused): never a secret in its words."""

    def __call__(self, *, address: str, what: str, reason: str, caller: str | None = None) -> None: ...


def log_refusal(*, address: str, what: str, reason: str, caller: str | None = None) -> None:
    """The sink of a manager that keeps no audit log: the `treeherd.audit` log alone."""
    audit.warning("refused %s from %s%s: %s", what, address, f" ({caller})" if caller else "", reason)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    role: Role
    # The node id and role of the client certificate the caller presented (mutual TLS), if any.
    node_id: str | None = None
    node_role: str = "worker"
    # A user certificate's serial number: it authenticates only while on record and not revoked.
    user_cert_serial: int | None = None


USER_CERTIFICATE_ROLES = frozenset({Role.ADMIN.value, Role.OPERATOR.value, Role.VIEWER.value})
USER_CERTIFICATE_PREFIX = "user:"  # of a user certificate's common name: never a node id
PEER_CERTIFICATE = "treeherd.peer_certificate"  # scope extension: the client certificate's DER


def certificate_caller(scope: dict[str, Any]) -> Caller | None:
    """The caller a verified client certificate names (the TLS layer checked it against the cluster
    CA): an agent, by its node id."""
    der = scope.get("extensions", {}).get(PEER_CERTIFICATE)
    if not der:
        return None
    identity = identity_of_der(der)
    if identity.role in USER_CERTIFICATE_ROLES:  # a user's certificate (`treeherd cert create`)
        if not identity.node_id.startswith(USER_CERTIFICATE_PREFIX):
            return None
        return Caller(name=identity.node_id, role=Role(identity.role), user_cert_serial=identity.serial)
    if scope.get("type") != "websocket":
        return None  # a node's certificate identifies it on the agent channel only
    return Caller(name=identity.node_id, role=Role.AGENT, node_id=identity.node_id, node_role=identity.role)


def _authorization(scope: dict[str, Any]) -> str:
    """The Authorization header, read from the raw scope (cheaper than the framework's header map)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return ""


LOCAL_ADMIN = Caller(name="local", role=Role.ADMIN)
TOKEN_COOKIE = "treeherd_token"


VERIFIED_TOKENS_KEPT = 1024


class Authenticator:
    """Resolves a connection's caller and checks the operation's scope; a guard for every route."""

    def __init__(
        self,
        view: Callable[[], View],
        clock: Callable[[], datetime],
        *,
        required: bool,
        refusals: RefusalSink = log_refusal,
    ) -> None:
        self._view = view
        self._clock = clock
        self.required = required
        # Presented token text -> (the stored record it was checked against, its caller). A hit is
        # used only while the store still holds that very record (a removed or changed token is
        # checked afresh, and refused), so the digest and parsing are done once per token, not per
        # request.
        self._verified: dict[str, tuple[ApiToken, Caller]] = {}
        self._refusals = refusals

    def caller(self, authorization: str, cookies: Callable[[], dict[str, str]] | None = None) -> Caller:
        if not self.required:
            return LOCAL_ADMIN
        scheme, _, credential = authorization.partition(" ")
        if not authorization and cookies is not None:
            scheme, credential = "bearer", cookies().get(TOKEN_COOKIE, "")
        if scheme.lower() != "bearer" or not credential:
            raise refused()
        view, now = self._view(), self._clock()
        known = self._verified.get(credential)
        if known is not None:
            token, caller = known
            if view.get(ApiToken, token.id) is token and (token.expires_at is None or now < token.expires_at):
                return caller
        token = check_token(view, credential, now)
        caller = Caller(name=token.name, role=token.role)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[credential] = (token, caller)
        return caller

    async def guard(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler | None = None
    ) -> None:
        # A coroutine on purpose: the framework runs a plain function guard in a worker thread, and
        # that hop cost about a sixth of a small request's time.
        scope_data = cast(dict[str, Any], connection.scope)  # read only: no copy per request
        by_certificate = certificate_caller(scope_data)
        if by_certificate is not None:
            connection.scope["state"]["caller"] = by_certificate
        if not self.required:
            return
        method = WEBSOCKET if scope_data["type"] == "websocket" else str(scope_data["method"])
        template = str(scope_data.get("path_template", scope_data["path"]))
        scope = scope_of(method, template)
        if scope is Scope.PUBLIC:
            return
        where = connection.client.host if connection.client else "?"
        try:
            caller = by_certificate or self.caller(_authorization(scope_data), lambda: connection.cookies)
        except Unauthenticated:
            self._refusals(address=where, what=f"{method} {template}", reason="no valid credential")
            raise
        if caller.user_cert_serial is not None:
            why = user_cert_refusal(self._view(), caller.user_cert_serial)
            if why is not None:
                self._refusals(address=where, what=f"{method} {template}", reason=why, caller=caller.name)
                raise refused()
        # An operation missing from the table is refused to everyone (the app checks at start that
        # none is missing; this is the safe answer should one slip through).
        if scope is None or not allows(caller.role, scope):
            self._refusals(
                address=where,
                what=f"{method} {template}",
                reason=f"the role {caller.role.value} may not",
                caller=caller.name,
            )
            raise Forbidden(
                f"the role {caller.role.value} may not do this: ask an administrator for a token whose role may"
            )
        connection.scope["state"]["caller"] = caller
