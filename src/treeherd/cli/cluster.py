"""`treeherd cluster show|set|join-token|ca`: cluster-wide settings, joining, the root CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, fail, print_json, print_table
from treeherd.cli.params_services import duration
from treeherd.model.requests import ClusterUpdate
from treeherd.model.security import CaRotate, CaStatus, JoinTokens
from treeherd.model.services import ClusterSettings

CLUSTER = "/api/v1/cluster"
CA = "/api/v1/cluster/ca"
FIELDS = [
    "heartbeat_period_s",
    "heartbeat_epsilon_s",
    "heartbeat_grace_multiplier",
    "status_batch_interval_s",
    "status_batch_max",
    "task_history",
    "registration_limit",
    "registration_window_s",
    "node_loss_fraction",
    "node_loss_hold_s",
    "endpoint_ttl_s",
    "drain_delay_s",
    "puppet_default_class",
    "puppet_unknown_host",
]


@click.group()
def cluster() -> None:
    """Cluster-wide settings, and joining the cluster."""


@cluster.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="make a new token first: the old one admits no new node")
@click.option("-q", "--quiet", is_flag=True, help="print the token only")
@pass_ctx
def join_token(ctx: Context, role: str, rotate: bool, quiet: bool) -> None:
    """Show the token a new worker (or manager) joins with."""
    path = "/api/v1/cluster/join-tokens"
    tokens = (
        ctx.client.request("POST", f"{path}/{role}/rotate", type=JoinTokens)
        if rotate
        else ctx.client.get(path, JoinTokens)
    )
    token = getattr(tokens, role)
    if quiet:
        click.echo(token)
        return
    if rotate:
        click.echo(f"the {role} join token was rotated: the old one admits no new node", err=True)
    click.echo(
        f"To add a {role} to this cluster, give it this join token (in a 0600 file, TREEHERD_JOIN_TOKEN_FILE):"
    )
    click.echo(f"    {token}")


@cluster.command("ca")
@click.option(
    "--rotate", is_flag=True, help="rotate the root CA: every node gets a certificate from a new root"
)
@click.option(
    "--external-ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="with --rotate: the new root is this CA certificate (PEM) instead of one made by the manager",
)
@click.option(
    "--external-ca-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the key of --external-ca-cert (PEM, unencrypted)",
)
@FORMAT_OPTION
@pass_ctx
def ca(
    ctx: Context, rotate: bool, external_ca_cert: Path | None, external_ca_key: Path | None, fmt: str
) -> None:
    """Show the cluster CA and a root rotation's progress, or start one (--rotate)."""
    if (external_ca_cert is None) != (external_ca_key is None):
        fail("--external-ca-cert and --external-ca-key go together: give both, or neither")
    if external_ca_cert is not None and not rotate:
        fail("--external-ca-cert is the new root of a rotation: add --rotate")
    if rotate:
        body = CaRotate(
            external_ca_cert_pem=external_ca_cert.read_text() if external_ca_cert else "",
            external_ca_key_pem=external_ca_key.read_text() if external_ca_key else "",
        )
        status = ctx.client.request("POST", f"{CA}/rotate", body, type=CaStatus)
    else:
        status = ctx.client.get(f"{CA}/rotation", CaStatus)
    if fmt == "json":
        print_json(status)
        return
    click.echo(f"root CA digest: sha256:{status.digest}")
    if not status.rotating:
        click.echo("no rotation under way")
        return
    total = len(status.done) + len(status.pending)
    click.echo(
        f"rotation under way since {status.started:%Y-%m-%d %H:%M:%S} UTC: {len(status.done)}/{total} node(s)"
        f" renewed; the old root is retired when all have, or at {status.deadline:%Y-%m-%d %H:%M:%S} UTC"
    )
    if status.pending:
        click.echo("pending: " + ", ".join(status.pending))


@cluster.command("show")
@FORMAT_OPTION
@pass_ctx
def show(ctx: Context, fmt: str) -> None:
    """Show the settings."""
    settings = ctx.client.get(CLUSTER, ClusterSettings)
    if fmt == "json":
        print_json(settings)
    else:
        print_table(["SETTING", "VALUE"], [[f, getattr(settings, f)] for f in FIELDS])


@cluster.command("set")
@click.option("--heartbeat-period", metavar="DURATION", help="agents' heartbeat period (default 5s)")
@click.option("--heartbeat-epsilon", metavar="DURATION", help="random extra per heartbeat deadline (0.5s)")
@click.option(
    "--heartbeat-grace",
    type=float,
    help="periods of silence before a node is down (3): the told period + epsilon, then this less one",
)
@click.option("--status-batch-interval", metavar="DURATION", help="flush task statuses this often (100ms)")
@click.option("--status-batch-max", type=int, help="or at this many statuses (10000)")
@click.option("--task-history", type=int, help="finished tasks kept per slot (5)")
@click.option(
    "--node-loss-fraction",
    type=float,
    help="when more than this share of nodes goes down within the hold time, replacements wait (0.1)",
)
@click.option(
    "--node-loss-hold", metavar="DURATION", help="how long tasks of a node lost in a mass loss wait (60s)"
)
@click.option(
    "--endpoint-ttl", metavar="DURATION", help="endpoint registrations expire unless refreshed within (30s)"
)
@click.option(
    "--drain-delay",
    metavar="DURATION",
    help="how long a task leaving the proxies (update, scale-down, removal) waits before it stops (1s)",
)
@click.option(
    "--puppet-default-class", metavar="NAME", help="what conflicting (and unknown) hosts get ('' for none)"
)
@click.option(
    "--puppet-unknown-host",
    type=click.Choice(["fail", "default"]),
    help="the ENC for a host the tree does not know: fail (exit 1) or the default class",
)
@FORMAT_OPTION
@pass_ctx
def set_(
    ctx: Context,
    heartbeat_period: str | None,
    heartbeat_epsilon: str | None,
    heartbeat_grace: float | None,
    status_batch_interval: str | None,
    status_batch_max: int | None,
    task_history: int | None,
    node_loss_fraction: float | None,
    node_loss_hold: str | None,
    endpoint_ttl: str | None,
    drain_delay: str | None,
    puppet_default_class: str | None,
    puppet_unknown_host: str | None,
    fmt: str,
) -> None:
    """Change settings."""
    fields: dict[str, Any] = {}
    if puppet_default_class is not None:
        fields["puppet_default_class"] = puppet_default_class or None
    if puppet_unknown_host is not None:
        fields["puppet_unknown_host"] = puppet_unknown_host
    for name, value in (
        ("heartbeat_period_s", heartbeat_period),
        ("heartbeat_epsilon_s", heartbeat_epsilon),
        ("status_batch_interval_s", status_batch_interval),
        ("node_loss_hold_s", node_loss_hold),
        ("endpoint_ttl_s", endpoint_ttl),
        ("drain_delay_s", drain_delay),
    ):
        if value is not None:
            fields[name] = duration(value, "--" + name.removesuffix("_s").replace("_", "-"))
    for name, number in (
        ("heartbeat_grace_multiplier", heartbeat_grace),
        ("status_batch_max", status_batch_max),
        ("task_history", task_history),
        ("node_loss_fraction", node_loss_fraction),
    ):
        if number is not None:
            fields[name] = number
    updated = ctx.client.request("PATCH", CLUSTER, ClusterUpdate(**fields), type=ClusterSettings)
    done(fmt, updated, "updated the cluster settings")


COMMANDS = [cluster]
