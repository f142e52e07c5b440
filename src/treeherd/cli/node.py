"""`treeherd node ...`: the machines that run an agent, as the cluster sees them."""

from __future__ import annotations

from typing import Any

import click
from msgspec import UNSET

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import (
    FORMAT_OPTION,
    INSPECT_FORMAT_OPTION,
    done,
    fail,
    human_bytes,
    inspected,
    listing,
)
from treeherd.model.objects import Machine
from treeherd.model.requests import MachineUpdate
from treeherd.model.tasks_view import StoryEntry
from treeherd.model.views import Deleted

MACHINES = "/api/v1/machines"


@click.group()
def node() -> None:
    """Cluster nodes: machines with an agent (their state, availability and role)."""


@node.command("ls")
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, fmt: str) -> None:
    """List cluster nodes."""
    machines = ctx.client.get(MACHINES, list[Machine], agents=True)
    listing(
        fmt,
        machines,
        ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "KIND", "CPUS", "MEMORY"],
        lambda m: [
            m.id,
            m.hostname,
            m.agent.state if m.agent else "-",
            m.availability,
            m.role,
            m.machine_kind,
            f"{m.cpus:g}",
            human_bytes(m.memory_bytes),
        ],
    )


def hostname_of(ctx: Context, node: str) -> str:
    """The hostname of a node named by its hostname, its id, or a prefix of its id that names one node
    (as `docker node` takes them); what names no node is passed on, for the manager to say so."""
    machines = ctx.client.get(MACHINES, list[Machine])
    if any(m.hostname == node for m in machines):
        return node
    exact = [m.hostname for m in machines if m.id == node]
    prefixed = [m.hostname for m in machines if m.id.startswith(node)]
    if exact:
        return exact[0]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        fail(
            f"{node!r} is the start of {len(prefixed)} node ids ({', '.join(sorted(prefixed))}): give more of it"
        )
    return node


@node.command("inspect")
@click.argument("node_ref", metavar="NODE")
@INSPECT_FORMAT_OPTION
@pass_ctx
def inspect(ctx: Context, node_ref: str, fmt: str) -> None:
    """Show a node (by hostname or id; as JSON by default)."""
    inspected(fmt, ctx.client.get(f"{MACHINES}/{hostname_of(ctx, node_ref)}", Machine))


@node.command("update")
@click.argument("hostname", metavar="NODE")
@click.option(
    "--availability",
    type=click.Choice(["active", "pause", "drain"]),
    help="pause: no new tasks; drain: move its tasks away",
)
@click.option("--role", type=click.Choice(["worker", "manager"]))
@click.option("--label-add", "label_add", multiple=True, metavar="K=V")
@click.option("--label-rm", "label_rm", multiple=True, metavar="K")
@FORMAT_OPTION
@pass_ctx
def update(
    ctx: Context,
    hostname: str,
    availability: Any,
    role: Any,
    label_add: tuple[str, ...],
    label_rm: tuple[str, ...],
    fmt: str,
) -> None:
    """Change a node's availability, role or labels (the node by hostname or id)."""
    from treeherd.cli.params import key_values

    labels: dict[str, str | None] = {**key_values(label_add, "--label-add"), **dict.fromkeys(label_rm)}
    request = MachineUpdate(availability=availability or UNSET, role=role or UNSET, labels=labels)
    hostname = hostname_of(ctx, hostname)
    updated = ctx.client.request("PATCH", f"{MACHINES}/{hostname}", request, type=Machine)
    done(fmt, updated, f"updated {updated.hostname}: {updated.availability}, {updated.role}")


@node.command("rm")
@click.argument("hostname", metavar="NODE")
@click.option("--force", is_flag=True, help="also remove its bindings")
@pass_ctx
def rm(ctx: Context, hostname: str, force: bool) -> None:
    """Remove a node (its machine record; by hostname or id) from the cluster."""
    hostname = hostname_of(ctx, hostname)
    result = ctx.client.request("DELETE", f"{MACHINES}/{hostname}", query={"force": force}, type=Deleted)
    click.echo(f"removed {hostname} ({', '.join(f'{n} {k}' for k, n in result.deleted.items())})")


@click.group()
def debug() -> None:
    """Look inside the control loop."""


@debug.command("story")
@click.argument("task_id")
@FORMAT_OPTION
@pass_ctx
def story(ctx: Context, task_id: str, fmt: str) -> None:
    """Every recorded transition of a task and what caused it (as long as the store keeps its history)."""
    entries = ctx.client.get(f"/api/v1/tasks/{task_id}/story", list[StoryEntry])
    listing(
        fmt,
        entries,
        ["REVISION", "TIME", "EVENT", "DESIRED", "STATE", "NODE", "WHY"],
        lambda e: [
            e.revision,
            e.time.isoformat(timespec="milliseconds"),
            e.event,
            e.desired_state,
            e.state,
            e.hostname,
            e.message,
        ],
    )


COMMANDS = [node, debug]
