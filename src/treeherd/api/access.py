"""The scope every API operation needs: one table, checked against the app's routes at start.

Each operation (method and path) names one scope (core.security.roles); the roles a scope admits
are what a caller needs. A route missing from the table stops the app from being built, so an
operation cannot ship without saying who may call it; the OpenAPI document lists each operation's
roles as `x-treeherd-roles`.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute, WebSocketRoute

from treeherd.core.security.roles import ROLES_FOR_SCOPE, Scope

WEBSOCKET = "WEBSOCKET"
_R, _O, _A, _G, _E, _P = Scope.READ, Scope.OPERATE, Scope.ADMINISTER, Scope.GATEWAY, Scope.ENC, Scope.PUBLIC

SCOPES: dict[tuple[str, str], Scope] = {
    # The tree, machines, bindings, domains, provisioning.
    ("GET", "/api/v1/nodes"): _R,
    ("POST", "/api/v1/nodes"): _O,
    ("GET", "/api/v1/nodes/{path}"): _R,
    ("PATCH", "/api/v1/nodes/{path}"): _O,
    ("DELETE", "/api/v1/nodes/{path}"): _O,
    ("POST", "/api/v1/nodes/{path}/move"): _O,
    ("POST", "/api/v1/nodes/{path}/routes"): _O,
    ("DELETE", "/api/v1/nodes/{path}/routes"): _O,
    ("GET", "/api/v1/nodes/{path}/bindings"): _R,
    ("GET", "/api/v1/nodes/{path}/resolved"): _R,
    ("GET", "/api/v1/machines"): _R,
    ("POST", "/api/v1/machines"): _O,
    ("GET", "/api/v1/machines/{hostname}"): _R,
    ("PATCH", "/api/v1/machines/{hostname}"): _O,
    ("DELETE", "/api/v1/machines/{hostname}"): _O,
    ("GET", "/api/v1/machines/{hostname}/bindings"): _R,
    ("POST", "/api/v1/machines/{hostname}/bindings"): _O,
    ("DELETE", "/api/v1/machines/{hostname}/bindings/{node}"): _O,
    ("GET", "/api/v1/bindings"): _R,
    ("GET", "/api/v1/domains"): _R,
    ("POST", "/api/v1/domains"): _O,
    ("GET", "/api/v1/domains/{name}"): _R,
    ("PATCH", "/api/v1/domains/{name}"): _O,
    ("DELETE", "/api/v1/domains/{name}"): _O,
    ("GET", "/api/v1/provisioning"): _R,
    ("POST", "/api/v1/provisioning"): _O,
    ("GET", "/api/v1/provisioning/{hostname}"): _R,
    ("DELETE", "/api/v1/provisioning/{hostname}"): _O,
    ("GET", "/api/v1/events"): Scope.WATCH,
    ("GET", "/api/v1/managers"): _R,
    # Services and tasks.
    ("GET", "/api/v1/services"): _R,
    ("POST", "/api/v1/services"): _O,
    ("GET", "/api/v1/services/{name}"): _R,
    ("PATCH", "/api/v1/services/{name}"): _O,
    ("DELETE", "/api/v1/services/{name}"): _O,
    ("POST", "/api/v1/services/{name}/rollback"): _O,
    ("POST", "/api/v1/services/{name}/promote"): _O,
    ("POST", "/api/v1/services/{name}/abort"): _O,
    ("GET", "/api/v1/services/{name}/logs"): _R,
    ("GET", "/api/v1/services/{name}/tasks"): _R,
    ("GET", "/api/v1/tasks/{task_id}"): _R,
    ("GET", "/api/v1/tasks/{task_id}/story"): _R,
    ("GET", "/api/v1/tasks/{task_id}/logs"): _R,
    # Cluster settings and tokens: administrators only.
    ("GET", "/api/v1/cluster"): _R,
    ("PATCH", "/api/v1/cluster"): _A,
    ("GET", "/api/v1/tokens"): _A,
    ("POST", "/api/v1/tokens"): _A,
    ("DELETE", "/api/v1/tokens/{name}"): _A,
    ("GET", "/api/v1/cluster/join-tokens"): _A,
    ("POST", "/api/v1/cluster/join-tokens/{role}/rotate"): _A,
    ("GET", "/api/v1/cluster/ca/rotation"): _A,
    ("POST", "/api/v1/cluster/ca/rotate"): _A,
    ("POST", "/api/v1/certs"): _A,
    ("GET", "/api/v1/certs"): _A,
    ("DELETE", "/api/v1/certs/{name}"): _A,
    # Joining: the CA's certificate is public; a join is authenticated by its join token.
    ("GET", "/api/v1/cluster/ca"): _P,
    ("POST", "/api/v1/join"): _P,
    # Puppet: the catalog is the operators'; the ENC and the facts reports are the Puppet server's.
    ("GET", "/api/v1/puppet/classes"): _R,
    ("PUT", "/api/v1/puppet/classes"): _O,
    ("GET", "/api/v1/puppet/conflicts"): _R,
    ("GET", "/api/v1/enc/{hostname}"): _E,
    ("POST", "/api/v1/machine-reports"): _E,
    # The edge: pins and policies are the operators'; the snapshot and reports are the gateways'.
    ("GET", "/api/v1/policies"): _R,
    ("PUT", "/api/v1/policies/{path}"): _O,
    ("DELETE", "/api/v1/policies/{path}"): _O,
    ("GET", "/api/v1/backends"): _R,
    ("PUT", "/api/v1/backends/{path}/{hostname}"): _O,
    ("GET", "/api/v1/gateways"): _R,
    ("GET", "/api/v1/gateways/{name}"): Scope.WATCH,
    ("POST", "/api/v1/gateways/{name}/events"): _G,
    ("GET", "/api/v1/gateway/snapshot"): _G,
    ("GET", "/api/v1/availability"): _R,
    ("PUT", "/api/v1/availability/{gateway}"): _G,
    ("GET", "/api/v1/alerts"): _R,
    ("GET", "/api/v1/proxies"): _R,
    ("GET", "/api/v1/proxies/{hostname}"): _R,
    ("GET", "/metrics"): _R,
    # Discovery: registrations from outside the agents are the operators'.
    ("GET", "/api/v1/endpoints/{name}"): _R,
    ("POST", "/api/v1/endpoints/{name}"): _O,
    ("DELETE", "/api/v1/endpoints/{name}/{address}/{port}"): _O,
    ("GET", "/api/v1/services-registry/{name}"): _R,
    # The agent channel.
    (WEBSOCKET, "/api/v1/agent"): Scope.SESSION,
    # The web console (treeherd.web): its pages read, its forms operate, its files are public.
    ("GET", "/ui"): _R,
    ("GET", "/ui/static/{name}"): _P,
    ("GET", "/ui/login"): _P,
    ("POST", "/ui/login"): _P,
    ("POST", "/ui/logout"): _P,
    ("GET", "/ui/tree"): _R,
    ("GET", "/ui/tree/children"): _R,
    ("GET", "/ui/tree/search"): _R,
    ("GET", "/ui/nodes/{path}"): _R,
    ("GET", "/ui/services"): _R,
    ("GET", "/ui/services/{name}"): _R,
    ("GET", "/ui/tasks/{task_id}"): _R,
    ("GET", "/ui/machines"): _R,
    ("GET", "/ui/edge"): _R,
    ("GET", "/ui/events"): _R,
    ("POST", "/ui/services/{name}/scale"): _O,
    ("POST", "/ui/machines/{hostname}/availability"): _O,
    ("POST", "/ui/nodes/{path}/labels"): _O,
    ("POST", "/ui/nodes/{path}/routes"): _O,
    ("POST", "/ui/nodes/{path}/attributes"): _O,
    ("POST", "/ui/nodes/{path}/machines"): _O,
    ("POST", "/ui/nodes/{path}/classes"): _O,
    ("POST", "/ui/nodes/{path}/pins"): _O,
    ("GET", "/ui/domains/{name}"): _R,
    ("POST", "/ui/domains"): _O,
    ("POST", "/ui/domains/{name}/settings"): _O,
    ("POST", "/ui/domains/{name}/delete"): _O,
    ("POST", "/ui/services/{name}/canary"): _O,
    ("POST", "/ui/services/{name}/promote"): _O,
    ("POST", "/ui/services/{name}/abort"): _O,
    # Liveness and the API's description.
    ("GET", "/healthz"): _P,
    ("GET", "/openapi.json"): _P,
    ("GET", "/schema"): _P,
    ("GET", "/schema/openapi.json"): _P,
    ("GET", "/schema/redoc.standalone.js"): _P,
    ("GET", "/schema/{path}"): _P,
}


def operations(app: Litestar) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, OPTIONS and HEAD aside (they follow GET and the table)."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            found.extend(
                (method, route.path_format) for method in sorted(route.methods - {"OPTIONS", "HEAD"})
            )
        elif isinstance(route, WebSocketRoute):
            found.append((WEBSOCKET, route.path_format))
    return found


def check_declared(app: Litestar) -> None:
    """Refuse an app with an operation the table does not name."""
    missing = [f"{method} {path}" for method, path in operations(app) if (method, path) not in SCOPES]
    if missing:
        raise RuntimeError(f"operations without a declared scope in api/access.py: {', '.join(missing)}")


def scope_of(method: str, path_format: str) -> Scope | None:
    if method in ("HEAD", "OPTIONS"):
        method = "GET"
    return SCOPES.get((method, path_format))


def add_roles_to_document(document: dict[str, Any]) -> None:
    """Write each operation's roles into the OpenAPI document as `x-treeherd-roles`."""
    for path, item in document.get("paths", {}).items():
        template = _litestar_path(path)
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            scope = scope_of(method.upper(), template)
            if scope is not None:
                operation["x-treeherd-scope"] = scope.value
                operation["x-treeherd-roles"] = sorted(role.value for role in ROLES_FOR_SCOPE[scope])


def _litestar_path(openapi_path: str) -> str:
    """OpenAPI writes `{name}` as the framework's path format does; both agree here."""
    return openapi_path
