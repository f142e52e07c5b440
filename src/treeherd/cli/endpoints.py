"""`treeherd endpoints NAME [--watch]`, `endpoints register|deregister`: service discovery."""

from __future__ import annotations

from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, print_json, print_table
from treeherd.cli.params_services import duration
from treeherd.model.discovery import EndpointRegister, EndpointView
from treeherd.transport.client import ClientError

ENDPOINTS = "/api/v1/endpoints"
WATCH_STALL_S = 60.0  # the event stream sends keepalives every 15 s


class _DefaultToShow(click.Group):
    """`treeherd endpoints NAME` is `treeherd endpoints show NAME`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise click.BadParameter(f"{text!r} is not IP:PORT", param_hint="--addr")
    return host.strip("[]"), int(port)


@click.group(cls=_DefaultToShow)
def endpoints() -> None:
    """Service discovery: the live endpoints of a service, and registrations with a TTL."""


def _print(views: list[EndpointView], fmt: str) -> None:
    if fmt == "json":
        print_json(views)
        return
    rows = [
        [
            v.address,
            v.port,
            v.host,
            v.source,
            v.weight,
            v.task_id or "",
            "" if v.expires_in_s is None else f"{v.expires_in_s:.0f}s",
        ]
        for v in views
    ]
    print_table(["ADDRESS", "PORT", "HOST", "SOURCE", "WEIGHT", "TASK", "EXPIRES IN"], rows)


@endpoints.command("show")
@click.argument("name")
@click.option("--watch", is_flag=True, help="print the endpoints again at every change (Ctrl-C to stop)")
@FORMAT_OPTION
@pass_ctx
def show(ctx: Context, name: str, watch: bool, fmt: str) -> None:
    """The endpoints of NAME: healthy tasks with a port, registrations, machines bound to its node."""
    views = ctx.client.get(f"{ENDPOINTS}/{name}", list[EndpointView])
    _print(views, fmt)
    if not watch:
        return
    last = views
    try:
        for kind, _data, _id in ctx.client.stream(
            "/api/v1/events", {"kind": ["endpoint", "binding", "machine"]}, read_timeout=WATCH_STALL_S
        ):
            if kind not in ("created", "updated", "deleted"):
                continue
            views = ctx.client.get(f"{ENDPOINTS}/{name}", list[EndpointView])
            if [(v.address, v.port, v.weight) for v in views] != [
                (v.address, v.port, v.weight) for v in last
            ]:
                click.echo("")
                _print(views, fmt)
                last = views
    except KeyboardInterrupt:
        return
    except ClientError as error:
        raise click.ClickException(f"the watch stopped: {error}") from None


@endpoints.command("register")
@click.argument("name")
@click.option("--addr", "address", required=True, metavar="IP:PORT")
@click.option(
    "--ttl", default="30s", show_default=True, metavar="DURATION", help="gone unless refreshed in time"
)
@click.option("--weight", type=int, default=1, show_default=True)
@click.option("--host", default="", help="a host name to show with it")
@FORMAT_OPTION
@pass_ctx
def register(ctx: Context, name: str, address: str, ttl: str, weight: int, host: str, fmt: str) -> None:
    """Register IP:PORT as an endpoint of NAME for --ttl (run it again to refresh)."""
    ip, port = _address(address)
    body = EndpointRegister(address=ip, port=port, ttl_s=duration(ttl, "--ttl"), weight=weight, host=host)
    view = ctx.client.request("POST", f"{ENDPOINTS}/{name}", body, type=EndpointView)
    done(fmt, view, f"registered {view.address}:{view.port} for {name} (ttl {view.ttl_s:g}s)")


@endpoints.command("deregister")
@click.argument("name")
@click.option("--addr", "address", required=True, metavar="IP:PORT")
@pass_ctx
def deregister(ctx: Context, name: str, address: str) -> None:
    """Remove a registration of NAME at once."""
    ip, port = _address(address)
    ctx.client.request("DELETE", f"{ENDPOINTS}/{name}/{ip}/{port}")
    click.echo(f"deregistered {ip}:{port} from {name}")


COMMANDS: list[Any] = [endpoints]
