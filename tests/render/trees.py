"""Tricky trees for the renderer's golden tests and the real `nginx -t` checks."""

from __future__ import annotations

import msgspec

from treeherd.core.tree.inventory import default_access_log, default_error_log
from treeherd.model.gateway import BackendState
from treeherd.model.objects import DomainPort, DomainUri
from treeherd.model.routing import RoutingSnapshot
from treeherd.testing import factories as f


def route(domain_id: str, uri: str) -> DomainUri:
    return DomainUri(domain_id=domain_id, uri=uri)


def backend_state(node_id: str, machine_id: str, **fields: object) -> BackendState:
    return BackendState(
        id=f"bs-{node_id}-{machine_id}",
        created_at=f.FIXED_NOW,
        updated_at=f.FIXED_NOW,
        node_id=node_id,
        machine_id=machine_id,
        **fields,  # type: ignore[arg-type]
    )


def tricky_snapshot(cert_dir: str = "/etc/treeherd/tls", log_root: str = "/var/log/edge") -> RoutingSnapshot:
    """Several domains per node and nodes per domain, inner and outer domains, ssl and plain ports on
    one domain, default and explicit log paths, weights (0 included), ip_hash, equal-length URIs, `/`
    beside `/api` beside `/api/v2`, an empty upstream, a node without a port, ejected and pinned
    backends, a shared upstream name, a wildcard domain and an IPv6 machine."""
    shop = f.domain(
        "shop.example.com",
        id="d-shop",
        ports=(80,),
        ssl_cert_path=f"{cert_dir}/shop.pem",
        ssl_key_path=f"{cert_dir}/shop.key",
    )
    shop = msgspec.structs.replace(shop, ports=[DomainPort(port=80), DomainPort(port=443, ssl=True)])
    internal = f.domain(
        "api.internal",
        id="d-internal",
        ports=(8080,),
        access_log_path=f"{log_root}/internal.json",
        error_log_path=f"{log_root}/internal.err",
    )
    wildcard = f.domain(
        "*.static.example.com",
        id="d-wild",
        ports=(80,),
        access_log_path=default_access_log("*.static.example.com"),
        error_log_path=default_error_log("*.static.example.com"),
    )
    idle = f.domain("idle.example.com", id="d-idle", ports=(80,))
    nodes = [
        f.node("corp", id="n-corp", port=8000),
        f.node("corp.web", id="n-web", parent_id="n-corp", domain_uris=[route("d-shop", "/")]),
        f.node(
            "corp.api",
            id="n-api",
            parent_id="n-corp",
            ip_hash=True,
            port=9000,
            domain_uris=[route("d-shop", "/api"), route("d-internal", "/")],
        ),
        f.node(
            "corp.api.v2",
            id="n-api2",
            parent_id="n-api",
            ip_hash=False,
            domain_uris=[route("d-shop", "/api/v2"), route("d-internal", "/v2")],
        ),
        f.node(
            "corp.static",
            id="n-static",
            parent_id="n-corp",
            upstream="assets",
            domain_uris=[route("d-shop", "/img"), route("d-shop", "/css"), route("d-wild", "/")],
        ),
        f.node("corp.empty", id="n-empty", parent_id="n-corp", domain_uris=[route("d-shop", "/soon")]),
        f.node("ops", id="n-ops"),
        f.node("ops.portless", id="n-portless", parent_id="n-ops", domain_uris=[route("d-internal", "/ops")]),
        f.node(
            "ops.assets",
            id="n-assets2",
            parent_id="n-ops",
            upstream="assets",
            port=7000,
            domain_uris=[route("d-internal", "/assets")],
        ),
    ]
    machines = [
        f.machine("web-1", id="m-web1", ips=["10.0.0.11", "192.168.0.11"]),
        f.machine("web-2", id="m-web2", ips=["10.0.0.12"]),
        f.machine("web-3", id="m-web3", ips=["10.0.0.13"]),
        f.machine("api-1", id="m-api1", ips=["10.0.1.1"]),
        f.machine("api-2", id="m-api2", ips=["10.0.1.2"]),
        f.machine("api-3", id="m-api3", ips=["10.0.1.3"]),
        f.machine("v6-1", id="m-v6", ips=["2001:db8::7"]),
        f.machine("noip", id="m-noip"),
    ]
    bindings = [
        f.binding("m-web1", "n-web", weight=5),
        f.binding("m-web2", "n-web", weight=1),
        f.binding("m-web3", "n-web", weight=0),
        f.binding("m-api1", "n-api", weight=2),
        f.binding("m-api2", "n-api", weight=2),
        f.binding("m-api3", "n-api", weight=2),
        f.binding("m-v6", "n-api2"),
        f.binding("m-noip", "n-api2"),
        f.binding("m-web1", "n-static"),
        f.binding("m-web2", "n-assets2"),
    ]
    states = [
        backend_state("n-api", "m-api1", ejected=True, reason="availability 0.20 < 0.50"),
        backend_state("n-api", "m-api2", ejected=True, pin="in"),
        backend_state("n-api", "m-api3", pin="out"),
    ]
    return RoutingSnapshot(
        revision=42,
        nodes=nodes,
        machines=machines,
        bindings=bindings,
        domains=[shop, internal, wildcard, idle],
        backends=states,
    )


def empty_snapshot() -> RoutingSnapshot:
    return RoutingSnapshot()
