"""Renders the nginx configuration of the edge proxy from a routing snapshot (N3): pure text, no I/O
beyond reading the templates shipped in the package.

Two files come out: `treeherd.conf` (upstreams, the 404 default servers and one server per domain and
port, for nginx's http context) and, for a standalone nginx, `nginx.conf`, a main configuration that
includes it. The output depends on the tree alone (no revision, no time), so a change elsewhere in the
store renders the same bytes and causes no reload.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

import jinja2
import msgspec

from treeherd.core.edge.routing import routing_table
from treeherd.model.routing import RoutingSnapshot, RoutingTable

__all__ = [
    "ROUTING_FILE",
    "MainOptions",
    "RenderOptions",
    "Rendered",
    "config_digest",
    "render_main",
    "render_nginx",
]

ROUTING_FILE = "treeherd.conf"
MAIN_FILE = "nginx.conf"
DEFAULT_ACCESS_LOG = "default_access.log"


class RenderOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Where relative log paths go, and which address the servers listen on (None: every address)."""

    log_dir: str = "logs"
    listen_host: str | None = None


class MainOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The main configuration around the routing file: absolute paths of the pid file, error log,
    temp directory and the routing file to include."""

    include_path: str
    pid_path: str
    error_log_path: str
    temp_dir: str
    error_log_level: str = "warn"
    worker_processes: str = "auto"
    worker_connections: int = 4096


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    """The routing file's text and what the renderer left out, with the reasons."""

    text: str
    problems: list[str]
    table: RoutingTable


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("treeherd.render", "templates"),
        autoescape=False,  # nginx configuration, not HTML; values are validated where they enter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def _listen(host: str | None) -> object:
    def listen(port: int) -> str:
        if host is None:
            return str(port)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    return listen


def _log_path(log_dir: str) -> object:
    def log_path(path: str) -> str:
        return path if path.startswith("/") else f"{log_dir.rstrip('/')}/{path}"

    return log_path


def render_nginx(snapshot: RoutingSnapshot, options: RenderOptions | None = None) -> Rendered:
    """The routing file for `snapshot`: same snapshot and options, same bytes."""
    options = options or RenderOptions()
    table = routing_table(snapshot)
    text = (
        _environment()
        .get_template("treeherd.conf.j2")
        .render(
            upstreams=table.upstreams,
            servers=table.servers,
            default_ports=table.default_ports,
            default_access_log=DEFAULT_ACCESS_LOG,
            listen=_listen(options.listen_host),
            log_path=_log_path(options.log_dir),
        )
    )
    return Rendered(text=text, problems=table.problems, table=table)


def render_main(options: MainOptions) -> str:
    """nginx's main configuration, including the routing file at `options.include_path`."""
    return _environment().get_template("nginx.conf.j2").render(**msgspec.structs.asdict(options))


def config_digest(files: Mapping[str, str]) -> str:
    """A SHA-256 over file names and contents: equal digests mean byte-identical configurations."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()
