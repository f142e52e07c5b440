"""The nginx renderer: golden files for tricky trees, determinism, and the real `nginx -t` on every
rendered file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgspec
import pytest

from tests.render.nginx_check import make_certificate, nginx_test
from tests.render.trees import empty_snapshot, route, tricky_snapshot
from treeherd.core.edge.routing import location_order, routing_table
from treeherd.model.routing import RoutingSnapshot
from treeherd.render.nginx import RenderOptions, render_nginx
from treeherd.testing import factories as f

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TREEHERD_UPDATE_GOLDEN") == "1"  # rewrite the golden files instead of comparing

CASES = {
    "tricky": (tricky_snapshot, RenderOptions()),
    "tricky_loopback": (tricky_snapshot, RenderOptions(listen_host="127.0.0.1", log_dir="/srv/edge/logs")),
    "empty": (empty_snapshot, RenderOptions()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_golden_file(name: str) -> None:
    build, options = CASES[name]
    text = render_nginx(build(), options).text
    golden = GOLDEN / f"{name}.conf"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), (
        f"rendered {name} differs from {golden} (TREEHERD_UPDATE_GOLDEN=1 rewrites it)"
    )


def _shuffled(snapshot: RoutingSnapshot, seed: int) -> RoutingSnapshot:
    rng = random.Random(seed)

    def mix(items: list) -> list:  # type: ignore[type-arg]
        items = list(items)
        rng.shuffle(items)
        return items

    return msgspec.structs.replace(
        snapshot,
        nodes=mix(snapshot.nodes),
        machines=mix(snapshot.machines),
        bindings=mix(snapshot.bindings),
        domains=mix(snapshot.domains),
        backends=mix(snapshot.backends),
    )


@pytest.mark.parametrize("seed", range(5))
def test_same_tree_same_bytes_whatever_the_order(seed: int) -> None:
    snapshot = tricky_snapshot()
    assert render_nginx(_shuffled(snapshot, seed)).text == render_nginx(snapshot).text


def test_a_revision_alone_changes_nothing() -> None:
    snapshot = tricky_snapshot()
    later = msgspec.structs.replace(snapshot, revision=snapshot.revision + 1000)
    assert render_nginx(later).text == render_nginx(snapshot).text


def test_locations_longest_first_ties_in_byte_order() -> None:
    assert location_order(["/", "/api", "/css", "/api/v2", "/img", "/a"]) == [
        "/api/v2",
        "/api",
        "/css",
        "/img",
        "/a",
        "/",
    ]
    table = routing_table(tricky_snapshot())
    shop = [s for s in table.servers if s.domain == "shop.example.com"]
    assert [s.port for s in shop] == [80, 443]
    assert [loc.uri for loc in shop[0].locations] == ["/api/v2", "/soon", "/api", "/css", "/img", "/"]


def test_servers_weights_and_down() -> None:
    table = routing_table(tricky_snapshot())
    by_name = {u.name: u for u in table.upstreams}
    web = by_name["corp_web"]
    assert [(s.endpoint, s.weight, s.down) for s in web.servers] == [
        ("10.0.0.11:8000", 5, ""),  # the first IP, the port inherited from corp
        ("10.0.0.12:8000", 1, ""),
        ("10.0.0.13:8000", 1, "weight 0"),
    ]
    api = by_name["corp_api"]
    assert api.ip_hash
    assert [(s.hostname, s.down) for s in api.servers] == [
        ("api-1", "ejected"),
        ("api-2", ""),  # ejected but pinned in
        ("api-3", "pinned out"),
    ]
    v2 = by_name["corp_api_v2"]
    assert not v2.ip_hash  # set to false below an ip_hash parent
    assert [s.endpoint for s in v2.servers] == ["[2001:db8::7]:9000"]


def test_what_cannot_serve_answers_503_and_is_reported() -> None:
    rendered = render_nginx(tricky_snapshot())
    table = rendered.table
    assert {u.name: u.serving for u in table.upstreams}["corp_empty"] is False
    assert "upstream corp_empty" not in rendered.text
    assert "return 503;  # nothing serves corp.empty" in rendered.text
    assert any("ops.portless has routes but no port" in p for p in rendered.problems)
    assert any("noip" in p and "no IP address" in p for p in rendered.problems)
    assert any("upstream name 'assets'" in p for p in rendered.problems)
    assert "upstream assets__n-assets2 {" in rendered.text


def test_every_server_logs_json_with_the_node_and_forwards_the_client() -> None:
    text = render_nginx(tricky_snapshot()).text
    for field in (
        "time", "host", "uri", "status", "request_time", "upstream_addr", "upstream_status",
        "upstream_response_time", "bytes", "node",
    ):  # fmt: skip
        assert f'"{field}":' in text
    assert "access_log logs/shop.example.com_access.log treeherd_json;" in text
    assert "error_log logs/shop.example.com_error.log;" in text
    assert "access_log /var/log/edge/internal.json treeherd_json;" in text
    for header in ("Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme"):  # fmt: skip
        assert f"proxy_set_header {header};" in text
    assert "listen 443 default_server ssl;\n    server_name _;\n    ssl_reject_handshake on;" in text


def test_a_mixed_port_is_left_out_and_reported() -> None:
    # nginx accepts `listen 443 ssl` and `listen 443` in two servers, but then answers the plain one
    # with "The plain HTTP request was sent to HTTPS port": the first domain by name keeps the port.
    plain = f.domain("zz-plain.example.com", id="d-plain", ports=(443,))
    snapshot = tricky_snapshot()
    snapshot = msgspec.structs.replace(snapshot, domains=[*snapshot.domains, plain])
    rendered = render_nginx(snapshot)
    assert not any(s.domain == "zz-plain.example.com" for s in rendered.table.servers)
    assert any("zz-plain.example.com:443 is left out" in p for p in rendered.problems)


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_nginx_accepts_every_rendered_file(name: str, tmp_path: Path) -> None:
    build, options = CASES[name]
    certs = tmp_path / "tls"
    make_certificate(certs, "shop")
    snapshot = build(str(certs), str(tmp_path / "edge")) if build is tricky_snapshot else build()
    (tmp_path / "edge").mkdir()
    (tmp_path / "logs").mkdir()
    options = msgspec.structs.replace(options, log_dir=str(tmp_path / "logs"))
    result = nginx_test(render_nginx(snapshot, options).text, tmp_path / "prefix")
    assert result.returncode == 0, result.stderr


def test_real_nginx_accepts_a_route_on_a_domain_without_a_root(tmp_path: Path) -> None:
    domain = f.domain("only-api.example.com", id="d1", ports=(8081,))
    node = f.node("svc", id="n1", port=9999, domain_uris=[route("d1", "/x")])
    snapshot = RoutingSnapshot(nodes=[node], domains=[domain])
    text = render_nginx(snapshot).text
    assert "location / {\n        return 404;" in text
    result = nginx_test(text, tmp_path)
    assert result.returncode == 0, result.stderr


def test_registered_endpoints_of_a_nodes_services_serve_it() -> None:
    from treeherd.model.discovery import Endpoint
    from treeherd.model.services import Service, TaskSpec

    snapshot = tricky_snapshot()
    web_node = next(n for n in snapshot.nodes if n.path == "corp.web")
    service = Service(
        id="s1",
        created_at=f.FIXED_NOW,
        updated_at=f.FIXED_NOW,
        name="web",
        node_id=web_node.id,
        task=TaskSpec(command=["x"]),
    )
    endpoints = [
        Endpoint(
            id="e1",
            created_at=f.FIXED_NOW,
            updated_at=f.FIXED_NOW,
            service="web",
            address="127.0.0.1",
            port=30001,
            host="vm",
            source="task",
        ),
        Endpoint(
            id="e2",
            created_at=f.FIXED_NOW,
            updated_at=f.FIXED_NOW,
            service="other",
            address="127.0.0.1",
            port=30002,
        ),
    ]
    table = routing_table(msgspec.structs.replace(snapshot, services=[service], endpoints=endpoints))
    web = {u.name: u for u in table.upstreams}["corp_web"]
    # The bound machines on the node's port, and the task's endpoint on its own port; not another service's.
    assert [s.endpoint for s in web.servers] == [
        "10.0.0.11:8000",
        "10.0.0.12:8000",
        "10.0.0.13:8000",
        "127.0.0.1:30001",
    ]
