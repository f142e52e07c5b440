"""/api/v1/endpoints/{name} (list, register, deregister) and /api/v1/services-registry/{name}/ (the
seed's view: `{"host", "ipv4_addr", "port"}` per live instance, by IP). Both need the dispatcher's
endpoint registry, so a manager without a dispatcher has neither, and a follower forwards them to the
leader (the app's `dispatcher` dependency refuses them there as leader-only)."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from treeherd.core.edge.discovery import check_address, service_endpoints
from treeherd.core.tasks.service_checks import validate_name
from treeherd.manager.dispatcher import Dispatcher
from treeherd.manager.endpoints import Registry
from treeherd.manager.inventory import Inventory
from treeherd.model.discovery import Endpoint, EndpointRegister, EndpointView, RegistryEntry
from treeherd.model.errors import InvalidInput, NotFound, Unavailable

__all__ = ["EndpointController", "RegistryController"]


def _registry(dispatcher: Dispatcher) -> Registry:
    if dispatcher.registry is None:
        raise Unavailable("this manager keeps no endpoint registry")
    return dispatcher.registry


def _view(endpoint: Endpoint, registry: Registry) -> EndpointView:
    return EndpointView(
        service=endpoint.service,
        address=endpoint.address,
        port=endpoint.port,
        host=endpoint.host,
        source=endpoint.source,
        weight=endpoint.weight,
        task_id=endpoint.task_id,
        machine_id=endpoint.machine_id,
        ttl_s=endpoint.ttl_s,
        expires_in_s=None if endpoint.source == "static" else registry.expires_in(endpoint.id),
    )


class EndpointController(Controller):
    path = "/api/v1/endpoints"
    tags = ["discovery"]

    @get("/{name:str}", summary="A service's endpoints: healthy tasks, registrations, bound machines")
    async def list_endpoints(
        self, inventory: Inventory, dispatcher: Dispatcher, name: str
    ) -> list[EndpointView]:
        registry = _registry(dispatcher)
        return [_view(e, registry) for e in service_endpoints(inventory.store.view(), name)]

    @post("/{name:str}", summary="Register an address of NAME, or refresh its TTL (repeat to keep it)")
    async def register(self, dispatcher: Dispatcher, name: str, data: EndpointRegister) -> EndpointView:
        registry = _registry(dispatcher)
        endpoint = await registry.register(
            validate_name(name), data.address, data.port, ttl_s=data.ttl_s, weight=data.weight, host=data.host
        )
        return _view(endpoint, registry)

    @delete("/{name:str}/{address:str}/{port:int}", summary="Remove a registration at once")
    async def deregister(self, dispatcher: Dispatcher, name: str, address: str, port: int) -> None:
        try:
            check_address(address)
        except InvalidInput:  # a URL that names no registration: nothing there to remove
            raise NotFound(
                f"no endpoint {address}:{port} of {name!r} is registered (an endpoint's address is an IP"
                " address)",
                field="address",
            ) from None
        await _registry(dispatcher).deregister(name, address, port)


class RegistryController(Controller):
    path = "/api/v1/services-registry"
    tags = ["discovery"]

    @get("/{name:str}", summary="The seed's view of a service: host, ipv4_addr and port of each instance")
    async def registry(self, inventory: Inventory, name: str) -> list[RegistryEntry]:
        # The seed's records hold IPv4 addresses only; the list is ordered by address.
        return [
            RegistryEntry(host=e.host, ipv4_addr=e.address, port=e.port)
            for e in service_endpoints(inventory.store.view(), name)
            if ":" not in e.address
        ]
