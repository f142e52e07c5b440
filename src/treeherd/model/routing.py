"""What the edge gateway renders from: a consistent snapshot of the routing objects at one revision,
and the routing table the core derives from it (upstreams, and servers with their ordered locations).

The snapshot travels over the API (`GET /api/v1/gateway/snapshot`); the gateway keeps it current with
the event stream from `revision` on.
"""

from __future__ import annotations

import msgspec

from treeherd.model.discovery import Endpoint
from treeherd.model.gateway import BackendState, HealthPolicy
from treeherd.model.objects import Binding, Domain, Machine, TreeNode
from treeherd.model.services import Service


class RoutingSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every object the edge configuration depends on, as of store revision `revision`."""

    revision: int = 0
    nodes: list[TreeNode] = []
    machines: list[Machine] = []
    bindings: list[Binding] = []
    domains: list[Domain] = []
    backends: list[BackendState] = []
    policies: list[HealthPolicy] = []
    # Services (which node each belongs to) and their registered endpoints: running tasks serve too.
    services: list[Service] = []
    endpoints: list[Endpoint] = []


class Backend(msgspec.Struct, frozen=True, kw_only=True):
    """One server of an upstream: a bound machine's first IP and the node's port, or a registered
    endpoint of a service on the node (a running task; `machine_id` is then the endpoint's id, the key
    its ejections and pins are kept under).

    `down` says why it takes no traffic ("" when it serves): weight 0, ejected, or pinned out.
    """

    machine_id: str
    hostname: str
    address: str
    port: int
    weight: int
    down: str = ""

    @property
    def endpoint(self) -> str:
        """`ip:port` as nginx writes it in `$upstream_addr` (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class Upstream(msgspec.Struct, frozen=True, kw_only=True):
    """The upstream of one routed node; `servers` is empty when nothing can serve (answered with 503)."""

    name: str
    node_id: str
    path: str
    ip_hash: bool
    servers: list[Backend]

    @property
    def serving(self) -> bool:
        return any(not server.down for server in self.servers)


class Location(msgspec.Struct, frozen=True, kw_only=True):
    """A `location` of a server: requests under `uri` go to the node's upstream (or get 503)."""

    uri: str
    node_id: str
    path: str
    upstream: str
    serving: bool


class ServerBlock(msgspec.Struct, frozen=True, kw_only=True):
    """One `server`: a domain on one port, locations longest URI first."""

    domain: str
    port: int
    ssl: bool
    ssl_cert_path: str | None
    ssl_key_path: str | None
    access_log_path: str
    error_log_path: str
    locations: list[Location]


class RoutingTable(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the nginx configuration says, in render order; `problems` are what was left out
    and why (a routed node without a port, a machine without an address)."""

    upstreams: list[Upstream]
    servers: list[ServerBlock]
    default_ports: list[tuple[int, bool]]
    problems: list[str] = []
