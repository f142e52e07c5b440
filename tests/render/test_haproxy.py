"""The local haproxy renderer: golden files, determinism, the real `haproxy -c` on every rendered
configuration, and clear errors for bad input."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import msgspec
import pytest

from treeherd.proxy.master import find_haproxy
from treeherd.render.haproxy import (
    HaproxyOptions,
    LocalProxy,
    LocalProxyInvalid,
    ProxyFrontend,
    ProxyServer,
    haproxy_name,
    render_haproxy,
    server_name,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TREEHERD_UPDATE_GOLDEN") == "1"  # rewrite the golden files instead of comparing
SOCKET = "/run/treeherd/haproxy/admin.sock"


def _server(address: str, port: int, weight: int = 1) -> ProxyServer:
    return ProxyServer(name=server_name(address, port), address=address, port=port, weight=weight)


def tricky_state() -> LocalProxy:
    """IPv4 and IPv6 servers, the weight bounds, a name haproxy would refuse, a frontend without servers."""
    return LocalProxy(
        frontends=[
            ProxyFrontend(
                name="db",
                port=10010,
                servers=[
                    _server("10.0.0.7", 5432, 0),
                    _server("10.0.0.2", 5432, 256),
                    _server("fd00::5", 5432),
                ],
            ),
            ProxyFrontend(name="team/search@eu", port=10012, servers=[_server("10.0.1.9", 9200, 3)]),
            ProxyFrontend(name="cache", port=10011),
        ]
    )


CASES = {
    "haproxy_tricky": (tricky_state, HaproxyOptions(admin_socket=SOCKET)),
    "haproxy_no_checks": (
        tricky_state,
        HaproxyOptions(admin_socket=SOCKET, checks=False, threads=2, connect_timeout_ms=250, retries=5),
    ),
    "haproxy_empty": (LocalProxy, HaproxyOptions(admin_socket=SOCKET)),
}


def haproxy_check(text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """The real `haproxy -c` on `text`; fails (never skips) when haproxy is missing."""
    binary = find_haproxy()
    if binary is None:
        pytest.fail("haproxy is not installed: run scripts/system-deps.sh (Debian package haproxy)")
    config = directory / "haproxy.cfg"
    config.write_text(text)
    return subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_golden_file(name: str) -> None:
    build, options = CASES[name]
    text = render_haproxy(build(), options)
    golden = GOLDEN / f"{name}.cfg"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), (
        f"rendered {name} differs from {golden} (TREEHERD_UPDATE_GOLDEN=1 rewrites it)"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_haproxy_accepts_every_golden_case(name: str, tmp_path: Path) -> None:
    build, options = CASES[name]
    result = haproxy_check(render_haproxy(build(), options), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _random_state(rng: random.Random) -> LocalProxy:
    ports = rng.sample(range(1024, 65536), 6)
    frontends = []
    for index in range(rng.randint(0, 6)):
        servers = {}
        for _ in range(rng.randint(0, 8)):
            address = rng.choice(
                [f"10.{rng.randint(0, 255)}.0.{rng.randint(1, 254)}", f"fd00::{rng.randint(1, 999)}"]
            )
            server = _server(address, rng.randint(1, 65535), rng.randint(0, 256))
            servers[server.name] = server
        name = rng.choice(["svc", "a.b", "x:y", "web/api", "db-1", "q_2"]) + str(index)
        frontends.append(ProxyFrontend(name=name, port=ports[index], servers=list(servers.values())))
    return LocalProxy(frontends=frontends)


@pytest.mark.parametrize("seed", range(8))
def test_haproxy_accepts_random_states(seed: int, tmp_path: Path) -> None:
    state = _random_state(random.Random(seed))
    result = haproxy_check(render_haproxy(state, HaproxyOptions(admin_socket=SOCKET)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("seed", range(5))
def test_order_of_frontends_and_servers_does_not_change_the_bytes(seed: int) -> None:
    rng = random.Random(seed)
    state = tricky_state()
    frontends = [
        msgspec.structs.replace(f, servers=rng.sample(f.servers, len(f.servers)))
        for f in rng.sample(state.frontends, len(state.frontends))
    ]
    options = HaproxyOptions(admin_socket=SOCKET)
    assert render_haproxy(LocalProxy(frontends=frontends), options) == render_haproxy(state, options)


def test_names_become_haproxy_identifiers() -> None:
    assert haproxy_name("team/search@eu") == "team_search_eu"
    assert haproxy_name("10.0.0.1:80") == "10.0.0.1:80"
    assert server_name("fd00::5", 80) == "fd00::5:80"
    text = render_haproxy(tricky_state(), HaproxyOptions(admin_socket=SOCKET))
    assert "listen team_search_eu\n" in text
    assert "server fd00::5:5432 [fd00::5]:5432 weight 1" in text


def _one(name: str = "svc", port: int = 10010, servers: list[ProxyServer] | None = None) -> ProxyFrontend:
    return ProxyFrontend(name=name, port=port, servers=servers or [])


BAD_STATES = {
    "port zero": (LocalProxy(frontends=[_one(port=0)]), "local port 0 is out of range 1-65535"),
    "port too high": (LocalProxy(frontends=[_one(port=65536)]), "local port 65536 is out of range"),
    "server port": (
        LocalProxy(frontends=[_one(servers=[ProxyServer(name="s", address="10.0.0.1", port=70000)])]),
        "server 's': port 70000 is out of range 1-65535",
    ),
    "weight above 256": (
        LocalProxy(
            frontends=[_one(servers=[ProxyServer(name="s", address="10.0.0.1", port=80, weight=257)])]
        ),
        "weight 257 is out of range 0-256",
    ),
    "negative weight": (
        LocalProxy(frontends=[_one(servers=[ProxyServer(name="s", address="10.0.0.1", port=80, weight=-1)])]),
        "weight -1 is out of range 0-256",
    ),
    "duplicate ports": (
        LocalProxy(frontends=[_one("a", 10010), _one("b", 10010)]),
        "local port 10010 is claimed by more than one frontend: a, b",
    ),
    "duplicate names after mapping": (
        LocalProxy(frontends=[_one("a/b", 10010), _one("a@b", 10011)]),
        "more than one frontend is named 'a_b'",
    ),
    "frontend name with a space": (LocalProxy(frontends=[_one("my svc")]), "'my svc' contains a space"),
    "server name with a space": (
        LocalProxy(frontends=[_one(servers=[ProxyServer(name="s 1", address="10.0.0.1", port=80)])]),
        "'s 1' contains a space",
    ),
    "empty name": (LocalProxy(frontends=[_one("")]), "frontend has an empty name"),
    "newline in a name": (
        LocalProxy(frontends=[_one("a\nbind 0.0.0.0:80")]),
        "contains a space or a control",
    ),
    "reserved name": (LocalProxy(frontends=[_one("GLOBAL")]), "'GLOBAL' is reserved by haproxy"),
    "host name instead of an IP": (
        LocalProxy(frontends=[_one(servers=[ProxyServer(name="s", address="db.example", port=80)])]),
        "address 'db.example' is not an IP address",
    ),
    "duplicate servers": (
        LocalProxy(frontends=[_one(servers=[_server("10.0.0.1", 80), _server("10.0.0.1", 80)])]),
        "more than one server is named '10.0.0.1:80'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_is_a_clear_error(case: str) -> None:
    state, message = BAD_STATES[case]
    with pytest.raises(LocalProxyInvalid) as caught:
        render_haproxy(state, HaproxyOptions(admin_socket=SOCKET))
    assert message in caught.value.detail
    assert caught.value.detail.startswith("invalid local proxy: ")


def test_every_problem_is_listed_at_once() -> None:
    state = LocalProxy(frontends=[_one("a b", 0), _one("c", 99999)])
    with pytest.raises(LocalProxyInvalid) as caught:
        render_haproxy(state, HaproxyOptions(admin_socket=SOCKET))
    assert caught.value.detail.count(";") == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (HaproxyOptions(admin_socket="relative.sock"), "must be an absolute path"),
        (HaproxyOptions(admin_socket="/" + "d" * 120 + "/admin.sock"), "a UNIX socket path holds 107"),
        (HaproxyOptions(admin_socket=SOCKET, listen_address="localhost"), "'localhost' is not an IP address"),
        (HaproxyOptions(admin_socket=SOCKET, check_interval_ms=0), "check interval (ms) 0 is out of range"),
        (HaproxyOptions(admin_socket=SOCKET, threads=0), "threads 0 is out of range"),
    ],
)
def test_bad_options_are_a_clear_error(options: HaproxyOptions, message: str) -> None:
    with pytest.raises(LocalProxyInvalid) as caught:
        render_haproxy(LocalProxy(), options)
    assert message in caught.value.detail
