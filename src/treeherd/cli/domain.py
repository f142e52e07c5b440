"""`treeherd domain|route|provision ...`: edge domains, the routes that reach tree nodes, and hosts
still being installed."""

from __future__ import annotations

import click
from msgspec import UNSET

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, listing, print_json, print_table
from treeherd.cli.params import domain_port
from treeherd.model.objects import Domain, TreeNode
from treeherd.model.requests import DomainCreate, DomainUpdate, ProvisionCreate, RouteSpec
from treeherd.model.views import ProvisionView

DOMAINS = "/api/v1/domains"
PROVISIONING = "/api/v1/provisioning"


@click.group()
def domain() -> None:
    """Domains served by the edge proxy."""


@domain.command("add")
@click.argument("name")
@click.option("--port", "ports", multiple=True, required=True, metavar="PORT[:ssl]", help="a listening port")
@click.option("--ssl-cert", metavar="FILE", help="certificate path (needed when a port has ssl)")
@click.option("--ssl-key", metavar="FILE", help="private key path (needed when a port has ssl)")
@click.option("--access-log", metavar="FILE", help="default: NAME_access.log")
@click.option("--error-log", metavar="FILE", help="default: NAME_error.log")
@FORMAT_OPTION
@pass_ctx
def add(
    ctx: Context,
    name: str,
    ports: tuple[str, ...],
    ssl_cert: str | None,
    ssl_key: str | None,
    access_log: str | None,
    error_log: str | None,
    fmt: str,
) -> None:
    """Add a domain."""
    request = DomainCreate(
        name=name,
        ports=[domain_port(p) for p in ports],
        ssl_cert_path=ssl_cert,
        ssl_key_path=ssl_key,
        access_log_path=access_log,
        error_log_path=error_log,
    )
    created = ctx.client.request("POST", DOMAINS, request, type=Domain)
    done(fmt, created, f"added {created.name}")


def _ports(d: Domain) -> list[str]:
    return [f"{p.port}{':ssl' if p.ssl else ''}" for p in d.ports]


@domain.command("ls")
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, fmt: str) -> None:
    """List domains."""
    domains = ctx.client.get(DOMAINS, list[Domain])
    listing(
        fmt,
        domains,
        ["NAME", "PORTS", "ACCESS LOG", "ERROR LOG", "CERTIFICATE"],
        lambda d: [d.name, _ports(d), d.access_log_path, d.error_log_path, d.ssl_cert_path],
    )


@domain.command("show")
@click.argument("name")
@FORMAT_OPTION
@pass_ctx
def show(ctx: Context, name: str, fmt: str) -> None:
    """Show one domain."""
    found = ctx.client.get(f"{DOMAINS}/{name}", Domain)
    if fmt == "json":
        print_json(found)
        return
    print_table(
        ["FIELD", "VALUE"],
        [
            ["name", found.name],
            ["id", found.id],
            ["version", found.version],
            ["ports", _ports(found)],
            ["access log", found.access_log_path],
            ["error log", found.error_log_path],
            ["ssl certificate", found.ssl_cert_path],
            ["ssl key", found.ssl_key_path],
        ],
    )


@domain.command("set")
@click.argument("name")
@click.option("--port", "ports", multiple=True, metavar="PORT[:ssl]", help="replace the ports")
@click.option("--ssl-cert", metavar="FILE", help="'' to clear")
@click.option("--ssl-key", metavar="FILE", help="'' to clear")
@click.option("--access-log", metavar="FILE", help="'' for the default")
@click.option("--error-log", metavar="FILE", help="'' for the default")
@click.option("--version", "version", type=int, help="only if the domain is still at this version")
@FORMAT_OPTION
@pass_ctx
def set_(
    ctx: Context,
    name: str,
    ports: tuple[str, ...],
    ssl_cert: str | None,
    ssl_key: str | None,
    access_log: str | None,
    error_log: str | None,
    version: int | None,
    fmt: str,
) -> None:
    """Change a domain."""

    def opt(value: str | None) -> str | None:
        return UNSET if value is None else (value or None)  # type: ignore[return-value]

    request = DomainUpdate(
        version=version,
        ports=[domain_port(p) for p in ports] if ports else UNSET,
        ssl_cert_path=opt(ssl_cert),
        ssl_key_path=opt(ssl_key),
        access_log_path=opt(access_log),
        error_log_path=opt(error_log),
    )
    updated = ctx.client.request("PATCH", f"{DOMAINS}/{name}", request, type=Domain)
    done(fmt, updated, f"updated {updated.name} (version {updated.version})")


@domain.command("rm")
@click.argument("name")
@pass_ctx
def rm(ctx: Context, name: str) -> None:
    """Remove a domain that no route uses."""
    ctx.client.request("DELETE", f"{DOMAINS}/{name}")
    click.echo(f"removed {name}")


@click.group()
def route() -> None:
    """Routes: requests for DOMAIN + URI prefix go to a tree node's upstream."""


@route.command("add")
@click.argument("path")
@click.option("--domain", "domain_name", required=True, metavar="NAME")
@click.option("--uri", required=True, metavar="PREFIX", help="a path prefix such as /api")
@pass_ctx
def route_add(ctx: Context, path: str, domain_name: str, uri: str) -> None:
    """Route DOMAIN + URI to the node at PATH."""
    ctx.client.request("POST", f"/api/v1/nodes/{path}/routes", RouteSpec(domain=domain_name, uri=uri))
    click.echo(f"routed {domain_name}{uri} to {path}")


@route.command("rm")
@click.argument("path")
@click.option("--domain", "domain_name", required=True, metavar="NAME")
@click.option("--uri", required=True, metavar="PREFIX")
@pass_ctx
def route_rm(ctx: Context, path: str, domain_name: str, uri: str) -> None:
    """Remove a route from the node at PATH."""
    ctx.client.request("DELETE", f"/api/v1/nodes/{path}/routes", query={"domain": domain_name, "uri": uri})
    click.echo(f"removed route {domain_name}{uri} from {path}")


@route.command("ls")
@click.argument("prefix", required=False)
@FORMAT_OPTION
@pass_ctx
def route_ls(ctx: Context, prefix: str | None, fmt: str) -> None:
    """List routes by domain, longest URI first (the order nginx will match them)."""
    nodes = ctx.client.get("/api/v1/nodes", list[TreeNode], prefix=prefix)
    names = {d.id: d.name for d in ctx.client.get(DOMAINS, list[Domain])}
    rows = sorted(
        (
            {"domain": names.get(r.domain_id, r.domain_id), "uri": r.uri, "path": n.path}
            for n in nodes
            for r in n.domain_uris
        ),
        key=lambda r: (r["domain"], -len(r["uri"]), r["uri"]),
    )
    listing(fmt, rows, ["DOMAIN", "URI", "NODE"], lambda r: [r["domain"], r["uri"], r["path"]])


@click.group()
def provision() -> None:
    """Hosts being installed and the node each is meant for (the ENC's fallback)."""


@provision.command("add")
@click.argument("hostname")
@click.option("--node", required=True, metavar="PATH", help="the node the host is meant for")
@FORMAT_OPTION
@pass_ctx
def provision_add(ctx: Context, hostname: str, node: str, fmt: str) -> None:
    """Record that HOSTNAME, now being installed, belongs to the node at PATH."""
    record = ctx.client.request(
        "POST", PROVISIONING, ProvisionCreate(hostname=hostname, node=node), type=ProvisionView
    )
    done(fmt, record, f"{record.hostname} will be provisioned for {record.path}")


@provision.command("ls")
@FORMAT_OPTION
@pass_ctx
def provision_ls(ctx: Context, fmt: str) -> None:
    """List provisioning records."""
    records = ctx.client.get(PROVISIONING, list[ProvisionView])
    listing(fmt, records, ["HOSTNAME", "NODE", "SINCE"], lambda r: [r.hostname, r.path, r.created_at[:19]])


@provision.command("rm")
@click.argument("hostname")
@pass_ctx
def provision_rm(ctx: Context, hostname: str) -> None:
    """Remove a provisioning record."""
    ctx.client.request("DELETE", f"{PROVISIONING}/{hostname}")
    click.echo(f"removed the provisioning record of {hostname}")


COMMANDS = [domain, route, provision]
