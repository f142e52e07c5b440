"""The routing table of the edge proxy, derived from a snapshot of the tree (N1-N3): pure and
deterministic, so the same tree always renders the same bytes.

- one upstream per node that has routes, named after the node's upstream attribute (a name two nodes
  share is made unique with the node id, and reported);
- its servers come from `backends()`, the one place that says what serves a node: bound machines on
  the node's port, and the registered endpoints (running, healthy tasks; external registrations) of
  the services on the node, on their own ports (a node only tasks serve needs no port);
- one server block per domain and port, its locations longest URI first, equal lengths in byte order;
- an upstream with nothing serving renders no `upstream` block: its locations answer 503.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from treeherd.core.tree.tree import resolve
from treeherd.model.discovery import Endpoint
from treeherd.model.gateway import DEFAULT_POLICY, ROOT_POLICY_NODE, BackendState, HealthPolicy
from treeherd.model.objects import Binding, Domain, Machine, TreeNode
from treeherd.model.routing import Backend, Location, RoutingSnapshot, RoutingTable, ServerBlock, Upstream

__all__ = ["SnapshotIndex", "backends", "location_order", "policy_for", "routing_table"]


class SnapshotIndex:
    """Lookups over a snapshot: nodes by id, bindings by node, backend states by (node, machine)."""

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self.snapshot = snapshot
        self.nodes: dict[str, TreeNode] = {n.id: n for n in snapshot.nodes}
        self.machines: dict[str, Machine] = {m.id: m for m in snapshot.machines}
        self.domains: dict[str, Domain] = {d.id: d for d in snapshot.domains}
        self.bindings: dict[str, list[Binding]] = defaultdict(list)
        for binding in snapshot.bindings:
            self.bindings[binding.node_id].append(binding)
        self.states: dict[tuple[str, str], BackendState] = {
            (s.node_id, s.machine_id): s for s in snapshot.backends
        }
        self.policies: dict[str, HealthPolicy] = {p.node_id: p for p in snapshot.policies}
        node_of_service = {s.name: s.node_id for s in snapshot.services}
        self.endpoints: dict[str, list[Endpoint]] = defaultdict(list)
        for endpoint in snapshot.endpoints:
            node_id = node_of_service.get(endpoint.service)
            if node_id is not None:
                self.endpoints[node_id].append(endpoint)

    def chain(self, node: TreeNode) -> list[TreeNode]:
        """The node's ancestors, root first."""
        found: list[TreeNode] = []
        parent_id = node.parent_id
        while parent_id is not None and (parent := self.nodes.get(parent_id)) is not None:
            found.append(parent)
            parent_id = parent.parent_id
        found.reverse()
        return found


def backends(index: SnapshotIndex, node: TreeNode, port: int | None) -> tuple[list[Backend], list[str]]:
    """What serves `node`: each bound machine's first IP on the node's `port`, with its binding weight
    and why it takes no traffic, if it does not, and the registered endpoints (on their own ports; they
    need no node port). Returns the backends (sorted) and the problems found."""
    found: list[Backend] = []
    problems: list[str] = []
    bindings = index.bindings.get(node.id, ())
    if port is None and bindings:
        problems.append(
            f"machines are bound to {node.path} but it has no port: they are left out"
            f" (treeherd tree set {node.path} --port N)"
        )
    for binding in bindings if port is not None else ():
        machine = index.machines.get(binding.machine_id)
        if machine is None:
            continue
        if not machine.ips:
            problems.append(
                f"machine {machine.hostname} is bound to {node.path} but has no IP address: it is left out"
                f" (treeherd machine set {machine.hostname} --ip ADDRESS)"
            )
            continue
        down = _down_reason(index.states.get((node.id, machine.id)), binding.weight)
        found.append(
            Backend(
                machine_id=machine.id,
                hostname=machine.hostname,
                address=machine.ips[0],
                port=port or 0,  # never 0: bindings are skipped without a port
                weight=max(binding.weight, 1),
                down=down,
            )
        )
    for endpoint in index.endpoints.get(node.id, ()):
        down = _down_reason(index.states.get((node.id, endpoint.id)), endpoint.weight)
        found.append(
            Backend(
                machine_id=endpoint.id,
                hostname=endpoint.host or endpoint.address,
                address=endpoint.address,
                port=endpoint.port,
                weight=max(endpoint.weight, 1),
                down=down,
            )
        )
    found.sort(key=lambda b: (b.address, b.port, b.hostname))
    return found, problems


def _down_reason(state: BackendState | None, weight: int) -> str:
    """Why a backend is rendered `down` ("" when it is not): a pin out, an ejection not pinned in, or
    weight 0 (nginx refuses `weight=0`)."""
    if state is not None and state.pin == "out":
        return "pinned out"
    if state is not None and state.ejected and state.pin != "in":
        return "ejected"
    if weight == 0:
        return "weight 0"
    return ""


def location_order(uris: Iterable[str]) -> list[str]:
    """Longest first (nginx reads a prefix list top-down the way people do); equal lengths in byte order."""
    return sorted(uris, key=lambda uri: (-len(uri), uri.encode()))


def policy_for(index: SnapshotIndex, node: TreeNode) -> HealthPolicy:
    """The health policy of the node or its nearest ancestor that has one, else the root policy (the
    stored one, or the built-in default: ejection on, alerts off)."""
    for level in [node, *reversed(index.chain(node))]:
        policy = index.policies.get(level.id)
        if policy is not None:
            return policy
    return index.policies.get(ROOT_POLICY_NODE, DEFAULT_POLICY)


def routing_table(snapshot: RoutingSnapshot) -> RoutingTable:
    """The edge proxy's configuration as data, in the order it is written."""
    index = SnapshotIndex(snapshot)
    problems: list[str] = []
    upstreams: list[Upstream] = []
    by_node: dict[str, Upstream] = {}
    taken: set[str] = set()
    routed = sorted((n for n in snapshot.nodes if n.domain_uris), key=lambda n: n.path)
    for node in routed:
        resolved = resolve(node, index.chain(node))
        name = str(resolved.upstream.value)
        if name in taken:
            problems.append(
                f"{node.path} uses upstream name {name!r}, which another node already has: it is"
                f" rendered as {name}__{node.id} (give it its own with: treeherd tree set {node.path}"
                " --upstream NAME)"
            )
            name = f"{name}__{node.id}"
        taken.add(name)
        value = resolved.port.value
        port = value if isinstance(value, int) and not isinstance(value, bool) else None
        servers, found = backends(index, node, port)
        problems += found
        if port is None and not servers:
            problems.append(
                f"{node.path} has routes but no port and no running task: its locations answer 503"
                f" (treeherd tree set {node.path} --port N, or give it a service)"
            )
        upstream = Upstream(
            name=name, node_id=node.id, path=node.path, ip_hash=bool(resolved.ip_hash.value), servers=servers
        )
        by_node[node.id] = upstream
        upstreams.append(upstream)
    upstreams.sort(key=lambda u: u.name)

    locations: dict[str, list[Location]] = defaultdict(list)
    for node in routed:
        upstream = by_node[node.id]
        for route in node.domain_uris:
            locations[route.domain_id].append(
                Location(
                    uri=route.uri,
                    node_id=node.id,
                    path=node.path,
                    upstream=upstream.name,
                    serving=upstream.serving,
                )
            )

    servers_out: list[ServerBlock] = []
    port_ssl: dict[int, tuple[bool, str]] = {}
    for domain in sorted(snapshot.domains, key=lambda d: d.name):
        ordered = location_order(loc.uri for loc in locations.get(domain.id, ()))
        by_uri = {loc.uri: loc for loc in locations.get(domain.id, ())}
        for entry in domain.ports:
            seen = port_ssl.setdefault(entry.port, (entry.ssl, domain.name))
            if seen[0] != entry.ssl:
                problems.append(
                    f"port {entry.port} of {domain.name} is {'ssl' if entry.ssl else 'plain'} but {seen[1]}"
                    f" already uses it {'ssl' if seen[0] else 'plain'}: nginx cannot mix them on one port,"
                    f" so {domain.name}:{entry.port} is left out"
                )
                continue
            servers_out.append(
                ServerBlock(
                    domain=domain.name,
                    port=entry.port,
                    ssl=entry.ssl,
                    ssl_cert_path=domain.ssl_cert_path,
                    ssl_key_path=domain.ssl_key_path,
                    access_log_path=domain.access_log_path,
                    error_log_path=domain.error_log_path,
                    locations=[by_uri[uri] for uri in ordered],
                )
            )
    servers_out.sort(key=lambda s: (s.domain, s.port))
    default_ports = sorted((port, ssl) for port, (ssl, _) in port_ssl.items())
    return RoutingTable(
        upstreams=upstreams, servers=servers_out, default_ports=default_ports, problems=problems
    )
