"""`treeherd alerts` (every firing alert: services' availability, proxies' crash loops) and
`treeherd proxy ls|show` (what happened to each host's local haproxy)."""

from __future__ import annotations

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, listing, print_json, print_table
from treeherd.model.proxies import Alert, ProxyRecord


def _when(alert: Alert) -> str:
    return alert.since.strftime("%Y-%m-%d %H:%M:%S") if alert.since is not None else "-"


@click.command("alerts")
@FORMAT_OPTION
@pass_ctx
def alerts(ctx: Context, fmt: str) -> None:
    """Firing alerts: a service under its availability threshold, a proxy master in a crash loop."""
    found = ctx.client.get("/api/v1/alerts", list[Alert])
    listing(
        fmt,
        found,
        ["ALERT", "SOURCE", "SUBJECT", "SINCE", "REASON"],
        lambda a: [a.kind, a.source, a.subject, _when(a), a.reason],
    )


@click.group("proxy")
def proxy() -> None:
    """Hosts' local haproxy: restarts and crash loops (the gateway's nginx: treeherd gateway show)."""


@proxy.command("ls")
@FORMAT_OPTION
@pass_ctx
def proxy_ls(ctx: Context, fmt: str) -> None:
    """Hosts whose haproxy had something to report, with the last event."""
    records = ctx.client.get("/api/v1/proxies", list[ProxyRecord])
    listing(
        fmt,
        records,
        ["HOST", "PROXY", "CRASH LOOP", "LAST EVENT"],
        lambda p: [p.hostname, p.proxy, "ALERT" if p.crash_loop else "-", p.summary()],
    )


@proxy.command("show")
@click.argument("hostname")
@FORMAT_OPTION
@pass_ctx
def proxy_show(ctx: Context, hostname: str, fmt: str) -> None:
    """A host's haproxy events (the last 50), oldest first."""
    record = ctx.client.get(f"/api/v1/proxies/{hostname}", ProxyRecord)
    if fmt == "json":
        print_json(record)
        return
    print_table(
        ["AT", "EVENT", "REASON"],
        [[e.at.strftime("%Y-%m-%d %H:%M:%S"), e.type, e.reason] for e in record.recent],
    )


COMMANDS = [alerts, proxy]
