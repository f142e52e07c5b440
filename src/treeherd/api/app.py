"""Builds the manager's ASGI application: every route, the error handlers, the OpenAPI document."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from treeherd import __version__
from treeherd.api.errors import HANDLERS, decode_body_strictly
from treeherd.api.routes.domains import DomainController, ProvisionController
from treeherd.api.routes.events import EventController
from treeherd.api.routes.machines import BindingController, MachineController
from treeherd.api.routes.system import healthz, openapi_json
from treeherd.api.routes.tree import NodeController
from treeherd.manager.inventory import Inventory

MAX_BODY_BYTES = 4 * 1024 * 1024


def create_app(inventory: Inventory) -> Litestar:
    """The API over one inventory (and through it, one store)."""

    def provide_inventory() -> Inventory:
        return inventory

    return Litestar(
        route_handlers=[
            NodeController,
            MachineController,
            BindingController,
            DomainController,
            ProvisionController,
            EventController,
            healthz,
            openapi_json,
        ],
        dependencies={"inventory": Provide(provide_inventory, sync_to_thread=False)},
        before_request=decode_body_strictly,
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="treeherd",
            version=__version__,
            description="The service tree, machine inventory and domains of a treeherd cluster.",
            path="/schema",
        ),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,
        debug=False,
    )
