"""/healthz and /openapi.json."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from treeherd import __version__
from treeherd.manager.inventory import Inventory
from treeherd.model.views import Health


@get("/healthz", summary="Liveness and the store's revision", tags=["system"])
async def healthz(inventory: Inventory) -> Health:
    return Health(status="ok", revision=inventory.store.revision, version=__version__)


@get("/openapi.json", summary="The OpenAPI document of this API", tags=["system"], include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = request.app.openapi_schema.to_schema()
    return schema
