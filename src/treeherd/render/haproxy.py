"""Renders the configuration of a host's local haproxy (D3) from its desired state: pure, deterministic
text (same state and options, same bytes, whatever the order of frontends and servers).

A `LocalProxy` lists frontends, one per dependency service, each owning a port on 127.0.0.1 and the
service's live endpoints as servers. Everything that enters the configuration is validated here (ports,
weights, addresses, names), so haproxy sees only values it accepts; names are mapped to haproxy's
identifier characters and two names that map to the same identifier are refused.

The servers' keywords come from `server_keywords`, used both by the template and by the runtime API's
`add server` (haproxy 2.6 applies no `default-server` line to servers added at runtime), so a server looks
the same whether it was loaded from the file or added later.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

import jinja2
import msgspec

from treeherd.model.errors import InvalidInput

__all__ = [
    "MAX_WEIGHT",
    "HaproxyOptions",
    "LocalProxy",
    "LocalProxyInvalid",
    "ProxyFrontend",
    "ProxyServer",
    "haproxy_name",
    "render_haproxy",
    "server_endpoint",
    "server_keywords",
    "server_name",
    "validate_local_proxy",
    "validate_options",
]

MAX_WEIGHT = 256  # haproxy's largest server weight
MAX_NAME = 100
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9._:-]")  # haproxy's allowed characters in proxy/server names
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_RESERVED = {"GLOBAL", "MASTER"}  # haproxy's own proxies (stats socket, master CLI)


class ProxyServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One endpoint of a dependency: an IP literal (v4 or v6, never a host name: no DNS at run time) and
    a port. `name` is stable across changes (see `server_name`); `weight` 0 takes no new traffic."""

    name: str
    address: str
    port: int
    weight: int = 1


class ProxyFrontend(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A dependency service reached at 127.0.0.1:`port`; its live endpoints are the servers (none: the
    port accepts connections and closes them)."""

    name: str
    port: int
    servers: list[ProxyServer] = []


class LocalProxy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The desired state of one host's local haproxy."""

    frontends: list[ProxyFrontend] = []

    def frontend_ports(self) -> dict[str, int]:
        """Each frontend's haproxy name and port: when these change, haproxy must reload."""
        return {haproxy_name(f.name): f.port for f in self.frontends}


class HaproxyOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the process runs, fixed for its life: the admin socket's path, timeouts, retries, checks.

    With `checks`, every server gets an active TCP check every `check_interval_ms` (`check_fall` failures
    mark it down, `check_rise` successes up) and passive observation of real traffic: one failed
    connection marks it down at once. The endpoint set already comes from health-checked registrations,
    but those take a registration update to arrive; the check takes a dead server out within one interval
    even if that update is late, and the observation takes it out on the first refused connection."""

    admin_socket: str
    listen_address: str = "127.0.0.1"
    threads: int = 1
    maxconn: int = 4096
    retries: int = 3
    # Short, because haproxy waits min(timeout connect, 1 s) before it retries a refused connection,
    # even on another server: with 1000 ms, the first request to a server that just died waited 1 s.
    # A connect on the hosts' network takes well under a millisecond; a slower one is retried elsewhere.
    connect_timeout_ms: int = 200
    client_timeout_s: int = 3600  # apps keep idle pooled connections: a short idle timeout would cut them
    server_timeout_s: int = 3600
    hard_stop_after_s: int = 60  # how long a replaced worker keeps serving its open connections
    checks: bool = True
    check_interval_ms: int = 1000
    check_fall: int = 1
    check_rise: int = 1


class LocalProxyInvalid(InvalidInput):
    """The desired state or the options cannot be rendered; `detail` lists every problem."""


def haproxy_name(name: str) -> str:
    """`name` as a haproxy identifier: characters haproxy refuses become `_`."""
    return _NOT_IDENTIFIER.sub("_", name)


def server_name(address: str, port: int) -> str:
    """A stable server name derived from the endpoint: `10.0.0.5:8080`, `fd00::5:8080` (the port follows
    the last colon, so different endpoints never share a name)."""
    return f"{address}:{port}"


def server_endpoint(address: str, port: int) -> str:
    """`address:port` as haproxy parses it (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def server_keywords(server: ProxyServer, options: HaproxyOptions) -> str:
    """The keywords after `server NAME ADDR:PORT`, the same in the file and in `add server`."""
    words = [f"weight {server.weight}"]
    if options.checks:
        words.append(
            f"check inter {options.check_interval_ms}ms fall {options.check_fall} rise {options.check_rise}"
            " observe layer4 error-limit 1 on-error mark-down"
        )
    return " ".join(words)


def _name_problems(what: str, name: str) -> list[str]:
    if not name:
        return [f"{what} has an empty name"]
    if len(name) > MAX_NAME:
        return [f"{what} name {name[:20]!r}... is longer than {MAX_NAME} characters"]
    if _SPACE_OR_CONTROL.search(name):
        return [f"{what} name {name!r} contains a space or a control character"]
    if haproxy_name(name).upper() in _RESERVED:
        return [f"{what} name {name!r} is reserved by haproxy"]
    return []


def _range_problem(what: str, value: int, low: int, high: int) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return [f"{what} {value!r} is out of range {low}-{high}"]
    return []


def _address_problems(what: str, address: str) -> list[str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [f"{what} address {address!r} is not an IP address"]
    return []


def _duplicates(values: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated


def _frontend_problems(frontend: ProxyFrontend) -> list[str]:
    label = f"frontend {frontend.name!r}"
    problems = _name_problems("frontend", frontend.name)
    problems += _range_problem(f"{label}: local port", frontend.port, 1, 65535)
    for server in frontend.servers:
        problems += _name_problems(f"{label}: server", server.name)
        problems += _address_problems(f"{label}: server {server.name!r}:", server.address)
        problems += _range_problem(f"{label}: server {server.name!r}: port", server.port, 1, 65535)
        problems += _range_problem(f"{label}: server {server.name!r}: weight", server.weight, 0, MAX_WEIGHT)
    for name in _duplicates(haproxy_name(s.name) for s in frontend.servers):
        problems.append(f"{label}: more than one server is named {name!r} (after mapping to haproxy names)")
    return problems


def validate_local_proxy(state: LocalProxy) -> None:
    """Raise `LocalProxyInvalid` listing every problem of `state`, or return."""
    problems: list[str] = []
    for frontend in state.frontends:
        problems += _frontend_problems(frontend)
    for name in _duplicates(haproxy_name(f.name) for f in state.frontends):
        problems.append(f"more than one frontend is named {name!r} (after mapping to haproxy names)")
    for port in _duplicates(str(f.port) for f in state.frontends):
        names = sorted(f.name for f in state.frontends if str(f.port) == port)
        problems.append(f"local port {port} is claimed by more than one frontend: {', '.join(names)}")
    if problems:
        raise LocalProxyInvalid("invalid local proxy: " + "; ".join(problems), field="frontends")


def validate_options(options: HaproxyOptions) -> None:
    """Raise `LocalProxyInvalid` listing every problem of `options`, or return."""
    problems: list[str] = []
    socket_bytes = len(options.admin_socket.encode())
    if not options.admin_socket.startswith("/") or _SPACE_OR_CONTROL.search(options.admin_socket):
        problems.append(f"admin socket {options.admin_socket!r} must be an absolute path without spaces")
    elif socket_bytes > UNIX_PATH_MAX:
        problems.append(
            f"admin socket path is {socket_bytes} bytes: a UNIX socket path holds {UNIX_PATH_MAX}"
        )
    problems += _address_problems("listen", options.listen_address)
    for what, value, low, high in (
        ("threads", options.threads, 1, 64),
        ("maxconn", options.maxconn, 1, 1_000_000),
        ("retries", options.retries, 0, 100),
        ("connect timeout (ms)", options.connect_timeout_ms, 1, 3_600_000),
        ("client timeout (s)", options.client_timeout_s, 1, 86_400),
        ("server timeout (s)", options.server_timeout_s, 1, 86_400),
        ("hard stop after (s)", options.hard_stop_after_s, 1, 86_400),
        ("check interval (ms)", options.check_interval_ms, 10, 3_600_000),
        ("check fall", options.check_fall, 1, 100),
        ("check rise", options.check_rise, 1, 100),
    ):
        problems += _range_problem(what, value, low, high)
    if problems:
        raise LocalProxyInvalid("invalid haproxy options: " + "; ".join(problems), field="options")


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("treeherd.render", "templates"),
        autoescape=False,  # haproxy configuration, not HTML; values are validated before rendering
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


class _RenderedServer(msgspec.Struct, frozen=True):
    id: str
    endpoint: str
    keywords: str


class _RenderedFrontend(msgspec.Struct, frozen=True):
    id: str
    name: str
    bind: str
    servers: list[_RenderedServer]


def render_haproxy(state: LocalProxy, options: HaproxyOptions) -> str:
    """haproxy's whole configuration for `state`; raises `LocalProxyInvalid` on bad input."""
    validate_options(options)
    validate_local_proxy(state)
    frontends = [
        _RenderedFrontend(
            id=haproxy_name(frontend.name),
            name=frontend.name,
            bind=server_endpoint(options.listen_address, frontend.port),
            servers=[
                _RenderedServer(
                    id=haproxy_name(server.name),
                    endpoint=server_endpoint(server.address, server.port),
                    keywords=server_keywords(server, options),
                )
                for server in sorted(frontend.servers, key=lambda s: haproxy_name(s.name))
            ],
        )
        for frontend in sorted(state.frontends, key=lambda f: haproxy_name(f.name))
    ]
    return _environment().get_template("haproxy.cfg.j2").render(options=options, frontends=frontends)


def frontends_of_config(text: str) -> dict[str, int]:
    """Each `listen` section's name and the port of its `bind` in a configuration rendered here: what a
    running haproxy serves, read back when a new owner adopts it."""
    found: dict[str, int] = {}
    section = ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not line[0].isspace():
            section = words[1] if words[0] == "listen" and len(words) > 1 else ""
        elif section and words[0] == "bind" and len(words) > 1:
            found[section] = int(words[1].rsplit(":", 1)[1])
    return found
