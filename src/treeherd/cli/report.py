"""`treeherd machine report`: the asset agent. A freshly installed host describes itself (hostname,
addresses, kind, CPUs, memory) to the manager, which registers or updates it and binds it to the node it
was provisioned for, removing the provisioning record, in one transaction. Safe to run again."""

from __future__ import annotations

import socket

import click

from treeherd.cli.machine import machine
from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, human_bytes, print_json
from treeherd.cli.params import key_values
from treeherd.model.provisioning import MachineReport, ReportResult
from treeherd.transport.client import Client

REPORTS = "/api/v1/machine-reports"


def describe(hostname: str | None, kind: str | None, labels: dict[str, str]) -> MachineReport:
    """This host as the system sees it (the agent's own detection: psutil, /proc and /sys)."""
    import psutil

    from treeherd.agent.agent import detect_machine_kind, machine_ips

    return MachineReport(
        hostname=hostname or socket.gethostname(),
        ips=machine_ips(),
        machine_kind=kind or detect_machine_kind(),  # type: ignore[arg-type]  # click.Choice checks it
        cpus=float(psutil.cpu_count() or 0),
        memory_bytes=int(psutil.virtual_memory().total),
        labels=labels,
    )


@machine.command("report")
@click.option("--manager", "manager_url", metavar="URL", help="the manager (default: treeherd's --manager)")
@click.option("--hostname", help="the name to report (default: this host's name)")
@click.option("--kind", type=click.Choice(["physical", "virtual"]), help="override the detected kind")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label to set (repeatable)")
@FORMAT_OPTION
@pass_ctx
def report(
    ctx: Context,
    manager_url: str | None,
    hostname: str | None,
    kind: str | None,
    labels: tuple[str, ...],
    fmt: str,
) -> None:
    """Register this host (or update it), and bind it where it was provisioned for."""
    request = describe(hostname, kind, key_values(labels, "--label"))
    client = Client(manager_url) if manager_url else ctx.client
    result = client.request("POST", REPORTS, request, type=ReportResult)
    if fmt == "json":
        print_json(result)
        return
    found = result.machine
    what = "registered" if result.created else ("updated" if result.changed else "unchanged:")
    click.echo(
        f"{what} {found.hostname} ({found.machine_kind}, {found.cpus:g} CPUs, {human_bytes(found.memory_bytes)},"
        f" {', '.join(found.ips) or 'no addresses'})"
    )
    if result.bound is not None:
        click.echo(f"bound {found.hostname} to {result.bound} (provisioning record removed)")


# The command joins the `machine` group when this module is imported (cli.main registers it).
COMMANDS: list[click.Command] = []
