"""`treeherd tree ...`: add, list, show, change, move and delete service tree nodes."""

from __future__ import annotations

from typing import Any

import click
from msgspec import UNSET

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, cell, done, listing, print_json, print_table
from treeherd.cli.params import key_values, puppet_class
from treeherd.model.objects import Domain, TreeNode
from treeherd.model.requests import NodeCreate, NodeMove, NodeUpdate
from treeherd.model.views import BindingView, Deleted, ResolvedNode

NODES = "/api/v1/nodes"


@click.group()
def tree() -> None:
    """The service tree: nodes named by dotted paths (corp.web.api)."""


def _classes(specs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return dict(puppet_class(spec) for spec in specs)


@tree.command("add")
@click.argument("path")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="a label (repeatable)")
@click.option("--puppet-class", "classes", multiple=True, metavar="NAME[:k=v,...]", help="a Puppet class")
@click.option(
    "--exclude-puppet-class", "exclude", multiple=True, metavar="NAME", help="drop an inherited class"
)
@click.option("--puppet-environment", metavar="ENV")
@click.option("--upstream", metavar="NAME", help="nginx upstream name (default: the path with '_')")
@click.option("--port", type=int, help="the port the service listens on")
@click.option("--ip-hash/--no-ip-hash", default=None, help="balance by client address")
@FORMAT_OPTION
@pass_ctx
def add(
    ctx: Context,
    path: str,
    labels: tuple[str, ...],
    classes: tuple[str, ...],
    exclude: tuple[str, ...],
    puppet_environment: str | None,
    upstream: str | None,
    port: int | None,
    ip_hash: bool | None,
    fmt: str,
) -> None:
    """Add a node at PATH (its parent must exist)."""
    request = NodeCreate(
        path=path,
        labels=key_values(labels, "--label"),
        puppet_classes=_classes(classes),
        puppet_exclude=list(exclude),
        puppet_environment=puppet_environment,
        upstream=upstream,
        port=port,
        ip_hash=ip_hash,
    )
    node = ctx.client.request("POST", NODES, request, type=TreeNode)
    done(fmt, node, f"added {node.path}")


@tree.command("ls")
@click.argument("prefix", required=False)
@FORMAT_OPTION
@pass_ctx
def ls(ctx: Context, prefix: str | None, fmt: str) -> None:
    """List nodes (under PREFIX, if given)."""
    nodes = ctx.client.get(NODES, list[TreeNode], prefix=prefix)
    listing(
        fmt,
        nodes,
        ["PATH", "LABELS", "PUPPET CLASSES", "PORT", "ROUTES"],
        lambda n: [n.path, n.labels, sorted(n.puppet_classes), n.port, len(n.domain_uris) or None],
    )


@tree.command("show")
@click.argument("path")
@click.option("--resolved", is_flag=True, help="effective values after inheritance, with their source")
@FORMAT_OPTION
@pass_ctx
def show(ctx: Context, path: str, resolved: bool, fmt: str) -> None:
    """Show one node."""
    if resolved:
        view = ctx.client.get(f"{NODES}/{path}/resolved", ResolvedNode)
        if fmt == "json":
            print_json(view)
            return
        rows: list[list[Any]] = [["path", view.path, ""]]
        for name in ("upstream", "port", "ip_hash", "puppet_environment"):
            sourced = getattr(view, name)
            rows.append([name, sourced.value, sourced.source])
        rows += [[f"label {k}", v.value, v.source] for k, v in view.labels.items()]
        rows += [[f"class {k}", v.params or "", v.source] for k, v in view.puppet_classes.items()]
        print_table(["ATTRIBUTE", "VALUE", "FROM"], rows)
        return
    node = ctx.client.get(f"{NODES}/{path}", TreeNode)
    if fmt == "json":
        print_json(node)
        return
    bindings = ctx.client.get(f"{NODES}/{path}/bindings", list[BindingView])
    domains = (
        {d.id: d.name for d in ctx.client.get("/api/v1/domains", list[Domain])} if node.domain_uris else {}
    )
    print_table(
        ["FIELD", "VALUE"],
        [
            ["path", node.path],
            ["id", node.id],
            ["version", node.version],
            ["labels", node.labels],
            [
                "puppet classes",
                [k + (f"({_params(v)})" if v else "") for k, v in node.puppet_classes.items()],
            ],
            ["puppet exclude", node.puppet_exclude],
            ["puppet environment", node.puppet_environment],
            ["upstream", node.upstream],
            ["port", node.port],
            ["ip_hash", node.ip_hash],
            ["routes", [f"{domains.get(r.domain_id, r.domain_id)}{r.uri}" for r in node.domain_uris]],
            ["machines", [f"{b.hostname}(weight {b.weight})" for b in bindings]],
            ["updated", node.updated_at.isoformat(timespec="seconds")],
        ],
    )


@tree.command("set")
@click.argument("path")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="set a label")
@click.option("--unset-label", "unset_labels", multiple=True, metavar="KEY", help="remove a label")
@click.option("--puppet-class", "classes", multiple=True, metavar="NAME[:k=v,...]", help="set a class")
@click.option(
    "--remove-puppet-class", "removed", multiple=True, metavar="NAME", help="remove a class set here"
)
@click.option(
    "--exclude-puppet-class",
    "exclude",
    multiple=True,
    metavar="NAME",
    help="drop an inherited class here (replaces the list; give '' to clear)",
)
@click.option("--puppet-environment", metavar="ENV", help="'' to inherit again")
@click.option("--upstream", metavar="NAME", help="'' for the default")
@click.option("--port", metavar="PORT", help="'' to inherit again")
@click.option("--ip-hash/--no-ip-hash", default=None)
@click.option("--inherit-ip-hash", is_flag=True, help="inherit ip_hash again")
@click.option("--version", "version", type=int, help="only if the node is still at this version")
@FORMAT_OPTION
@pass_ctx
def set_(
    ctx: Context,
    path: str,
    labels: tuple[str, ...],
    unset_labels: tuple[str, ...],
    classes: tuple[str, ...],
    removed: tuple[str, ...],
    exclude: tuple[str, ...],
    puppet_environment: str | None,
    upstream: str | None,
    port: str | None,
    ip_hash: bool | None,
    inherit_ip_hash: bool,
    version: int | None,
    fmt: str,
) -> None:
    """Change a node's attributes."""
    label_patch: dict[str, str | None] = {**key_values(labels, "--label"), **dict.fromkeys(unset_labels)}
    class_patch: dict[str, dict[str, Any] | None] = {**_classes(classes), **dict.fromkeys(removed)}
    port_value: Any = UNSET
    if port is not None:
        if port != "" and not port.isdigit():
            raise click.BadParameter(f"{port!r} is not a port number", param_hint="--port")
        port_value = int(port) if port else None
    request = NodeUpdate(
        version=version,
        labels=label_patch,
        puppet_classes=class_patch,
        puppet_exclude=UNSET if not exclude else [e for e in exclude if e],
        puppet_environment=UNSET if puppet_environment is None else (puppet_environment or None),
        upstream=UNSET if upstream is None else (upstream or None),
        port=port_value,
        ip_hash=None if inherit_ip_hash else (UNSET if ip_hash is None else ip_hash),
    )
    node = ctx.client.request("PATCH", f"{NODES}/{path}", request, type=TreeNode)
    done(fmt, node, f"updated {node.path} (version {node.version})")


@tree.command("mv")
@click.argument("path")
@click.argument("new_path")
@FORMAT_OPTION
@pass_ctx
def mv(ctx: Context, path: str, new_path: str, fmt: str) -> None:
    """Move or rename PATH (with its subtree) to NEW_PATH."""
    node = ctx.client.request("POST", f"{NODES}/{path}/move", NodeMove(to=new_path), type=TreeNode)
    done(fmt, node, f"moved {path} to {node.path}")


@tree.command("rm")
@click.argument("path")
@click.option(
    "--recursive", "-r", is_flag=True, help="also the subtree, its bindings and provisioning records"
)
@pass_ctx
def rm(ctx: Context, path: str, recursive: bool) -> None:
    """Delete a node."""
    result = ctx.client.request("DELETE", f"{NODES}/{path}", query={"recursive": recursive}, type=Deleted)
    summary = ", ".join(f"{count} {kind}(s)" for kind, count in sorted(result.deleted.items()))
    click.echo(f"deleted {path}: {summary}")


def _params(params: dict[str, Any]) -> str:
    return cell(params)


COMMANDS = [tree]
