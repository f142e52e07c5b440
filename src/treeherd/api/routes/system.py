"""/healthz, /openapi.json and the Redoc page at /schema (its script served from the package)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin

from treeherd import __version__
from treeherd.api.access import add_roles_to_document
from treeherd.api.contract import finish, model_structs
from treeherd.manager.inventory import Inventory
from treeherd.model.views import Health

REDOC_SCRIPT = "/schema/redoc.standalone.js"


@get("/healthz", summary="Liveness and the store's revision", tags=["system"])
async def healthz(inventory: Inventory) -> Health:
    return Health(status="ok", revision=inventory.store.revision, version=__version__)


def contract_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document as the server behaves (see api/contract.py), built once per app."""
    document: dict[str, Any] | None = app.state.get("openapi_document")
    if document is None:
        document = finish(app.openapi_schema.to_schema(), model_structs())
        add_roles_to_document(document)
        app.state["openapi_document"] = document
    return document


@get("/openapi.json", summary="The OpenAPI document of this API", tags=["system"], include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return contract_document(request.app)


@cache
def _redoc_script() -> bytes:
    return resources.files("treeherd.api").joinpath("static/redoc.standalone.js").read_bytes()


@get(REDOC_SCRIPT, include_in_schema=False, sync_to_thread=False)
def redoc_script() -> Response[bytes]:
    """Redoc's standalone bundle (MIT, see static/redoc.standalone.js.LICENSE.txt), from the package."""
    return Response(
        _redoc_script(),
        media_type="application/javascript",
        headers={"cache-control": "public, max-age=86400"},
    )


class Redoc(RedocRenderPlugin):
    """Redoc at /schema, on the corrected document, with its script from the package: no CDN, no fonts."""

    def __init__(self) -> None:
        super().__init__(js_url=REDOC_SCRIPT, google_fonts=False, path="/", favicon="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, contract_document(request.app))


class OpenApiJson(JsonRenderPlugin):
    """/schema/openapi.json: the same corrected document as /openapi.json."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, contract_document(request.app))
