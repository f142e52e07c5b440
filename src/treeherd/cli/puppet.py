"""`treeherd puppet ...`: the class catalog (synced from the Puppet code) and ENC conflicts; `treeherd enc`.

`sync-classes` reads the Puppet code here, on the operator's machine, and sends the classes it found:
`--modules DIR` (a directory of modules, each with `manifests/**/*.pp`; repeatable, like a modulepath)
or `--classes-file FILE` (one class a line). Nothing is sent when the code has errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from treeherd.cli.main import Context, pass_ctx
from treeherd.cli.output import FORMAT_OPTION, fail, listing, print_json
from treeherd.core.puppet.manifests import ManifestError, classes_file, module_classes
from treeherd.model.puppet import CatalogChange, CatalogSync, PuppetClass, PuppetConflict

CLASSES = "/api/v1/puppet/classes"
CONFLICTS = "/api/v1/puppet/conflicts"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024


@click.group()
def puppet() -> None:
    """Puppet classes nodes may use, and hosts whose classes conflict."""


def _module_dirs(root: Path) -> list[Path]:
    """`root` itself when it is one module (it has manifests/), else its subdirectories that are."""
    if (root / "manifests").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "manifests").is_dir())


def read_modules(roots: tuple[Path, ...]) -> tuple[list[PuppetClass], list[str]]:
    """The classes of every module under `roots` and the warnings about what was left out."""
    files: list[tuple[str, str, str]] = []
    for root in roots:
        if not root.is_dir():
            raise click.BadParameter(f"{root} is not a directory", param_hint="--modules")
        modules = _module_dirs(root)
        if not modules:
            raise click.BadParameter(
                f"{root} holds no Puppet module (a directory with a manifests/ directory)",
                param_hint="--modules",
            )
        for module in modules:
            manifests = module / "manifests"
            for path in sorted(manifests.rglob("*.pp")):
                if path.stat().st_size > MAX_MANIFEST_BYTES:
                    raise click.BadParameter(
                        f"{path} is larger than {MAX_MANIFEST_BYTES} bytes", param_hint="--modules"
                    )
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as error:
                    raise click.BadParameter(f"cannot read {path}: {error}", param_hint="--modules") from None
                files.append((module.name, path.relative_to(manifests).as_posix(), text))
    return module_classes(files)


@puppet.command("sync-classes")
@click.option(
    "--modules",
    "modules",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="a directory of Puppet modules (repeatable)",
)
@click.option(
    "--classes-file",
    "classes_file_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="a file with one class a line",
)
@click.option("--force", is_flag=True, help="even if nodes use classes or parameters the new catalog lacks")
@click.option("--dry-run", is_flag=True, help="show what would change, change nothing")
@FORMAT_OPTION
@pass_ctx
def sync_classes(
    ctx: Context,
    modules: tuple[Path, ...],
    classes_file_path: Path | None,
    force: bool,
    dry_run: bool,
    fmt: str,
) -> None:
    """Replace the class catalog with the classes the Puppet code defines."""
    if bool(modules) == bool(classes_file_path):
        raise click.UsageError("give either --modules DIR or --classes-file FILE")
    warnings: list[str] = []
    try:
        if classes_file_path is not None:
            try:
                text = classes_file_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise click.BadParameter(f"cannot read it: {error}", param_hint="--classes-file") from None
            classes = classes_file(text, str(classes_file_path))
            source = f"classes file {classes_file_path}"
        else:
            classes, warnings = read_modules(modules)
            source = "modules " + ", ".join(str(m) for m in modules)
    except ManifestError as error:
        fail(error.detail)
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    request = CatalogSync(classes=classes, source=source, force=force, dry_run=dry_run)
    change = ctx.client.request("PUT", CLASSES, request, type=CatalogChange)
    if fmt == "json":
        print_json(change)
        return
    verb = "would sync" if dry_run else "synced"
    click.echo(
        f"{verb} {change.classes} classes: {len(change.added)} added, {len(change.removed)} removed,"
        f" {len(change.changed)} changed"
    )
    for label, names in (("added", change.added), ("removed", change.removed), ("changed", change.changed)):
        if names:
            click.echo(f"  {label}: {', '.join(names)}")
    for stale in change.stale:
        click.echo(f"warning: still used: {stale}", err=True)


@puppet.command("classes")
@FORMAT_OPTION
@pass_ctx
def classes(ctx: Context, fmt: str) -> None:
    """List the class catalog."""
    found = ctx.client.get(CLASSES, list[PuppetClass])
    listing(
        fmt,
        found,
        ["CLASS", "PARENT", "PARAMETERS"],
        lambda c: [
            c.name,
            c.parent,
            ", ".join(p.name + ("" if p.default is None else f"={p.default}") for p in c.params)
            if c.params_known
            else "(not known)",
        ],
    )


@puppet.command("conflicts")
@FORMAT_OPTION
@pass_ctx
def conflicts(ctx: Context, fmt: str) -> None:
    """Hosts bound to nodes whose classes differ (the ENC gives them only the default class)."""
    found = ctx.client.get(CONFLICTS, list[PuppetConflict])
    listing(
        fmt,
        found,
        ["HOSTNAME", "NODES", "SINCE", "REASON"],
        lambda c: [c.hostname, c.nodes, c.created_at.isoformat(timespec="seconds"), c.reason],
    )


@click.command(
    "enc",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def enc(ctx: Context, args: tuple[str, ...]) -> None:
    """Print the Puppet ENC document (YAML) of a host (see: treeherd enc --help)."""
    from treeherd.cli.enc import run

    sys.exit(run(list(args), manager=ctx.manager))


COMMANDS = [puppet, enc]
