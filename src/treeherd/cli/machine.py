"""`treeherd machine ...`: the machine inventory and bindings of machines to tree nodes."""

from __future__ import annotations

from typing import Any

import click
import msgspec
from msgspec import UNSET

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, done, human_bytes, listing, print_json, print_table
from treeherd.cli.params import key_values, size
from treeherd.model.objects import Machine
from treeherd.model.requests import BindRequest, MachineCreate, MachineUpdate
from treeherd.model.views import BindingView, Deleted

MACHINES = "/api/v1/machines"
KIND = click.Choice(["physical", "virtual"])


@click.group()
def machine() -> None:
    """The machine inventory: hosts, their resources, and the nodes they are bound to."""


@machine.command("add")
@click.argument("hostname")
@click.option("--ip", "ips", multiple=True, metavar="IP", help="an address (repeatable)")
@click.option("--kind", type=KIND, default="virtual", show_default=True)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--cpus", type=float, default=0.0, help="CPU cores")
@click.option("--memory", metavar="SIZE", help="memory, e.g. 16G")
@FORMAT_OPTION
@pass_ctx
def add(
    ctx: Context,
    hostname: str,
    ips: tuple[str, ...],
    kind: Any,
    labels: tuple[str, ...],
    cpus: float,
    memory: str | None,
    fmt: str,
) -> None:
    """Add a machine."""
    request = MachineCreate(
        hostname=hostname,
        ips=list(ips),
        machine_kind=kind,
        labels=key_values(labels, "--label"),
        cpus=cpus,
        memory_bytes=size(memory) if memory else 0,
    )
    created = ctx.client.request("POST", MACHINES, request, type=Machine)
    done(fmt, created, f"added {created.hostname}")


@machine.command("ls")
@click.option("--node", metavar="PATH", help="only machines bound to this node")
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, node: str | None, fmt: str) -> None:
    """List machines."""
    machines = ctx.client.get(MACHINES, list[Machine], node=node)
    listing(
        fmt,
        machines,
        ["HOSTNAME", "KIND", "IPS", "CPUS", "MEMORY", "LABELS"],
        lambda m: [m.hostname, m.machine_kind, m.ips, f"{m.cpus:g}", human_bytes(m.memory_bytes), m.labels],
    )


@machine.command("show")
@click.argument("hostname")
@FORMAT_OPTION
@pass_ctx
def show(ctx: Context, hostname: str, fmt: str) -> None:
    """Show one machine and its bindings."""
    found = ctx.client.get(f"{MACHINES}/{hostname}", Machine)
    bindings = ctx.client.get(f"{MACHINES}/{hostname}/bindings", list[BindingView])
    if fmt == "json":
        print_json({**msgspec.to_builtins(found), "bindings": bindings})
        return
    print_table(
        ["FIELD", "VALUE"],
        [
            ["hostname", found.hostname],
            ["id", found.id],
            ["version", found.version],
            ["kind", found.machine_kind],
            ["ips", found.ips],
            ["cpus", f"{found.cpus:g}"],
            ["memory", human_bytes(found.memory_bytes)],
            ["labels", found.labels],
            ["bound to", [f"{b.path}(weight {b.weight})" for b in bindings]],
        ],
    )


@machine.command("set")
@click.argument("hostname")
@click.option("--ip", "ips", multiple=True, metavar="IP", help="replace the addresses")
@click.option("--kind", type=KIND)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--unset-label", "unset_labels", multiple=True, metavar="KEY")
@click.option("--cpus", type=float)
@click.option("--memory", metavar="SIZE")
@click.option("--version", "version", type=int, help="only if the machine is still at this version")
@FORMAT_OPTION
@pass_ctx
def set_(
    ctx: Context,
    hostname: str,
    ips: tuple[str, ...],
    kind: Any,
    labels: tuple[str, ...],
    unset_labels: tuple[str, ...],
    cpus: float | None,
    memory: str | None,
    version: int | None,
    fmt: str,
) -> None:
    """Change a machine."""
    request = MachineUpdate(
        version=version,
        ips=list(ips) if ips else UNSET,
        machine_kind=kind or UNSET,
        labels={**key_values(labels, "--label"), **dict.fromkeys(unset_labels)},
        cpus=UNSET if cpus is None else cpus,
        memory_bytes=size(memory) if memory else UNSET,
    )
    updated = ctx.client.request("PATCH", f"{MACHINES}/{hostname}", request, type=Machine)
    done(fmt, updated, f"updated {updated.hostname} (version {updated.version})")


@machine.command("bind")
@click.argument("hostname")
@click.argument("path")
@click.option("--weight", type=int, default=1, show_default=True, help="traffic share, 0-256 (0: no traffic)")
@FORMAT_OPTION
@pass_ctx
def bind(ctx: Context, hostname: str, path: str, weight: int, fmt: str) -> None:
    """Bind a machine to the node at PATH (again: change the weight)."""
    binding = ctx.client.request(
        "POST", f"{MACHINES}/{hostname}/bindings", BindRequest(node=path, weight=weight), type=BindingView
    )
    done(fmt, binding, f"bound {binding.hostname} to {binding.path} with weight {binding.weight}")


@machine.command("unbind")
@click.argument("hostname")
@click.argument("path")
@pass_ctx
def unbind(ctx: Context, hostname: str, path: str) -> None:
    """Unbind a machine from the node at PATH."""
    ctx.client.request("DELETE", f"{MACHINES}/{hostname}/bindings/{path}")
    click.echo(f"unbound {hostname} from {path}")


@machine.command("rm")
@click.argument("hostname")
@click.option("--force", is_flag=True, help="also remove its bindings")
@pass_ctx
def rm(ctx: Context, hostname: str, force: bool) -> None:
    """Remove a machine from the inventory."""
    result = ctx.client.request("DELETE", f"{MACHINES}/{hostname}", query={"force": force}, type=Deleted)
    bindings = result.deleted.get("binding", 0)
    click.echo(f"removed {hostname}" + (f" and {bindings} binding(s)" if bindings else ""))


COMMANDS = [machine]
