"""Service discovery: health checks in a task spec, and endpoints (registrations with a TTL).

A healthy task with a published port is an endpoint of its service, registered by its agent; anything
else may register itself the way the fleet "secretary" does (`source="external"`). A registration
lives while it is refreshed within its TTL. Machines bound to the service's node are endpoints too
(`source="static"`), derived from the tree when read, never stored.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from treeherd.model.base import Object

HealthKind = Literal["cmd", "http", "tcp"]
Health = Literal["", "starting", "healthy", "unhealthy"]
EndpointSource = Literal["task", "external", "static"]

DEFAULT_TTL_S = 30.0


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an agent checks a running task: a command (exit 0 is healthy), an HTTP GET on `path`
    (2xx/3xx) or a TCP connect, on 127.0.0.1 and the task's `port` (a port name; default its first).
    `retries` failures in a row make it unhealthy; failures within `start_period_s` do not count."""

    kind: HealthKind
    command: list[str] = []
    path: str = "/"
    port: str | None = None
    interval_s: float = 5.0
    timeout_s: float = 2.0
    retries: int = 3
    start_period_s: float = 0.0
    # Restart (fail) a task that turns unhealthy; otherwise it only stops being an endpoint.
    restart: bool = False


class Dependency(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A service a task reaches through its host's haproxy at 127.0.0.1:`local_port` (the same port on
    every host: allocated per cluster when not given, and kept on the depended-upon service)."""

    service: str
    local_port: int | None = None


class Endpoint(Object, frozen=True, kw_only=True, tag="endpoint"):
    """One address of a service: a registration that lives while refreshed within `ttl_s`."""

    kind: ClassVar[str] = "endpoint"
    service: str
    address: str
    port: int
    host: str = ""
    source: EndpointSource = "external"
    task_id: str | None = None
    machine_id: str | None = None
    weight: int = 1
    ttl_s: float = DEFAULT_TTL_S


def endpoint_key(service: str, address: str, port: int) -> str:
    """The unique key of an endpoint: one registration per service and address."""
    return f"{service} {address}:{port}"


class EndpointView(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint as the API shows it: where it comes from, and when its lease runs out."""

    service: str
    address: str
    port: int
    host: str
    source: EndpointSource
    weight: int
    task_id: str | None = None
    machine_id: str | None = None
    ttl_s: float = 0.0
    expires_in_s: float | None = None


class EndpointRegister(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/endpoints/{name}`: register (or refresh) an address, as the secretary does."""

    address: str
    port: int
    ttl_s: float = DEFAULT_TTL_S
    weight: int = 1
    host: str = ""


class RegistryEntry(msgspec.Struct, frozen=True):
    """The seed's record of a live instance: `/services/<name>/<ip>` = this."""

    host: str
    ipv4_addr: str
    port: int
