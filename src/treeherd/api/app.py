"""Builds the manager's ASGI application: every route, the error handlers, the OpenAPI document."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, Request, Response
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler

from treeherd import __version__
from treeherd.api.access import check_declared
from treeherd.api.auth import Authenticator, RefusalSink, log_refusal
from treeherd.api.errors import HANDLERS, decode_body_strictly
from treeherd.api.routes.agent import agent_router
from treeherd.api.routes.alerts import AlertController
from treeherd.api.routes.availability import AvailabilityController, metrics
from treeherd.api.routes.ca import CaController, CertController
from treeherd.api.routes.cluster import ClusterController
from treeherd.api.routes.domains import DomainController, ProvisionController
from treeherd.api.routes.endpoints import EndpointController, RegistryController
from treeherd.api.routes.events import EventController
from treeherd.api.routes.gateway import GatewayController
from treeherd.api.routes.join import JoinController
from treeherd.api.routes.machines import BindingController, MachineController
from treeherd.api.routes.managers import ManagerController, ManagerListing
from treeherd.api.routes.puppet import EncController, PuppetController, ReportController
from treeherd.api.routes.services import ServiceController, TaskController
from treeherd.api.routes.system import OpenApiJson, Redoc, healthz, openapi_json, redoc_script
from treeherd.api.routes.tokens import TokenController
from treeherd.api.routes.tree import NodeController
from treeherd.manager.availability_board import AvailabilityBoard
from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.inventory import Inventory
from treeherd.manager.puppet import Puppet
from treeherd.manager.services import Services
from treeherd.model.errors import LeaderOnly, Unavailable
from treeherd.model.managers import ManagerView

MAX_BODY_BYTES = 4 * 1024 * 1024


def create_app(
    inventory: Inventory,
    dispatcher: Dispatcher | Callable[[], Dispatcher] | None = None,
    board: AvailabilityBoard | None = None,
    *,
    require_auth: bool = False,
    authority: ClusterAuthority | None = None,
    extra_handlers: Sequence[ControllerRouterHandler] = (),
    refusals: RefusalSink | None = None,
    managers: ManagerListing | None = None,
) -> Litestar:
    """The API over one inventory (and through it, one store); with a dispatcher, the agent channel too;
    `board`: where the gateways' availability reports are kept (shared with the canary judge);
    `require_auth`: every operation but liveness and the API's description needs a token whose role
    its scope admits (api/access.py); `extra_handlers`: routes served beside the API with its
    dependencies and guard (the web console), each declared in api/access.py like every route;
    `refusals`: where refused authentications and authorisations are recorded (manager.audit_trail;
    default: the `treeherd.audit` log only); `managers`: lists the cluster's managers (default: this one,
    the leader)."""
    sink = refusals or log_refusal
    # Called from `before_request` for HTTP, and as the guard of the WebSocket routes: the framework
    # copies a route handler for every guard call, which cost a tenth of a small request's time.
    authenticator = Authenticator(
        lambda: inventory.view, inventory.clock, required=require_auth, refusals=sink
    )

    async def websocket_guard(connection: Any, handler: Any) -> None:
        # A plain function: the framework deep-copies a router's guards, and a bound method would
        # take its authenticator (and the audit trail's queue) along.
        await authenticator.guard(connection, handler)

    services = Services(inventory.store, clock=inventory.clock, ids=inventory.ids)
    puppet = Puppet(inventory.store, clock=inventory.clock, ids=inventory.ids)
    board = board if board is not None else AvailabilityBoard(clock=inventory.clock)

    def provide_inventory() -> Inventory:
        return inventory

    def provide_services() -> Services:
        return services

    def provide_board() -> AvailabilityBoard:
        return board

    def provide_puppet() -> Puppet:
        return puppet

    def provide_authority() -> ClusterAuthority:
        if authority is None:
            raise Unavailable("this manager has no cluster CA: nodes cannot join through it")
        return authority

    async def only_manager() -> list[ManagerView]:
        return [ManagerView(id="", url="", role="leader", revision=inventory.store.revision, lag=0)]

    def provide_managers() -> ManagerListing:
        return managers if managers is not None else only_manager

    def provide_dispatcher() -> Dispatcher:
        if dispatcher is None:
            raise Unavailable("this manager runs no dispatcher: agents and their logs are not reachable here")
        # A callable: the dispatcher of the current leadership term, or on a follower what stands in
        # for it, which the routes that need a dispatcher answer with 503 naming the leader.
        current = dispatcher if isinstance(dispatcher, Dispatcher) else dispatcher()
        if not isinstance(current, Dispatcher):
            raise LeaderOnly(f"{current.hint()} (agents, their logs and endpoint registrations are there)")
        return current

    app = Litestar(
        route_handlers=[
            NodeController,
            MachineController,
            BindingController,
            DomainController,
            ProvisionController,
            EventController,
            ServiceController,
            TaskController,
            ClusterController,
            PuppetController,
            EncController,
            ReportController,
            GatewayController,
            AvailabilityController,
            AlertController,
            TokenController,
            JoinController,
            CaController,
            CertController,
            ManagerController,
            metrics,
            *(_dispatcher_routes(dispatcher, websocket_guard) if dispatcher is not None else []),
            healthz,
            openapi_json,
            redoc_script,
            *extra_handlers,
        ],
        dependencies={
            "inventory": Provide(provide_inventory, sync_to_thread=False),
            "services": Provide(provide_services, sync_to_thread=False),
            "dispatcher": Provide(provide_dispatcher, sync_to_thread=False),
            "puppet": Provide(provide_puppet, sync_to_thread=False),
            "board": Provide(provide_board, sync_to_thread=False),
            "authority": Provide(provide_authority, sync_to_thread=False),
            "managers": Provide(provide_managers, sync_to_thread=False),
        },
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="treeherd",
            version=__version__,
            description="The service tree, machine inventory and domains of a treeherd cluster.",
            path="/schema",
            render_plugins=[Redoc(), OpenApiJson()],
        ),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,
        debug=False,
    )
    app.state.refusals = sink  # the join route records its refusals there too
    check_declared(app)
    allowed = _allowed_methods(app)

    async def before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
        await authenticator.guard(request, None)
        if request.method == "OPTIONS":
            methods = allowed.get(request.scope.get("path_template", ""), ("OPTIONS",))
            return Response(None, status_code=204, headers={"Allow": ", ".join(methods)})
        await decode_body_strictly(request)
        return None

    app.before_request = before_request
    return app


def _allowed_methods(app: Litestar) -> dict[str, tuple[str, ...]]:
    """Each path's methods, for `Allow` on OPTIONS (the framework's own OPTIONS answer lists only
    the methods of the handler it was made with, not every handler of the path)."""
    methods: dict[str, set[str]] = defaultdict(set)
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods[route.path_format].update(route.methods)
    return {path: tuple(sorted(found | {"OPTIONS"})) for path, found in methods.items()}


def _dispatcher_routes(
    dispatcher: Dispatcher | Callable[[], Dispatcher], guard: Any
) -> list[ControllerRouterHandler]:
    """The agent channel (with its own dispatcher dependency: a follower's stand-in refuses agents with
    the leader's URL; and the authentication guard, as a WebSocket has no `before_request`) and the
    endpoint registry's routes (the app's dependency: leader-only elsewhere)."""
    return [agent_router(dispatcher, guard), EndpointController, RegistryController]
