"""A node that only its services' tasks serve needs no port: its endpoints carry their own. Bound
machines still need the node's port, and are left out (and reported) without one."""

from __future__ import annotations

from treeherd.core.edge.routing import routing_table
from treeherd.model.discovery import Endpoint
from treeherd.model.objects import DomainUri
from treeherd.model.routing import RoutingSnapshot
from treeherd.testing import factories as f


def snapshot(*, port: int | None, bound: bool) -> RoutingSnapshot:
    domain = f.domain("shop.test", id="d1")
    shop = f.node("shop", id="n1", port=port, domain_uris=[DomainUri(domain_id="d1", uri="/")])
    host = f.machine("h1", id="m1", ips=["127.0.0.9"])
    web = f.service("web", "n1", id="s1")
    endpoint = Endpoint(
        id="e1",
        created_at=f.FIXED_NOW,
        updated_at=f.FIXED_NOW,
        service="web",
        address="127.0.0.1",
        port=30001,
        source="task",
        task_id="t1",
    )
    return RoutingSnapshot(
        nodes=[shop],
        machines=[host],
        bindings=[f.binding("m1", "n1")] if bound else [],
        domains=[domain],
        services=[web],
        endpoints=[endpoint],
    )


def test_tasks_serve_a_node_without_a_port():
    table = routing_table(snapshot(port=None, bound=False))
    (upstream,) = table.upstreams
    assert upstream.serving and [(s.address, s.port) for s in upstream.servers] == [("127.0.0.1", 30001)]
    assert table.problems == []


def test_bound_machines_without_a_port_are_left_out_and_reported():
    table = routing_table(snapshot(port=None, bound=True))
    (upstream,) = table.upstreams
    assert [(s.address, s.port) for s in upstream.servers] == [("127.0.0.1", 30001)]
    assert any("bound to shop but it has no port" in p for p in table.problems)
    with_port = routing_table(snapshot(port=8080, bound=True))
    assert [(s.address, s.port) for s in with_port.upstreams[0].servers] == [
        ("127.0.0.1", 30001),
        ("127.0.0.9", 8080),
    ]
