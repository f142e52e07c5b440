"""`treeherd context add|use|ls|rm`: the named client contexts of transport/contexts.py (managers, CA
file, token file), and which one the commands use when neither --manager nor the environment says."""

from __future__ import annotations

import os
from pathlib import Path

import click

from treeherd.cli.output import FORMAT_OPTION, fail, listing
from treeherd.transport.client import ClientError, manager_urls
from treeherd.transport.contexts import (
    ClientConfig,
    ClientContext,
    ConfigError,
    check_name,
    config_path,
    load_config,
    save_config,
)


def _load() -> ClientConfig:
    try:
        return load_config()
    except ConfigError as error:
        fail(str(error))
        raise AssertionError("unreachable") from None


def _save(config: ClientConfig) -> None:
    try:
        save_config(config)
    except ConfigError as error:
        fail(str(error))


def _existing_file(path: Path, option: str) -> str:
    if not path.is_file():
        fail(f"{option} names {path}, which is not a file")
    return str(path.resolve())


@click.group()
def context() -> None:
    """Client contexts: which managers to talk to, with which CA and token (kept in
    ~/.config/treeherd/config.toml, or $XDG_CONFIG_HOME/treeherd/config.toml)."""


@context.command("add")
@click.argument("name")
@click.option("--manager", "managers", required=True, metavar="URL[,URL]", help="the managers' API")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the cluster CA certificate the managers' certificates are checked against (DATA_DIR/ca.crt)",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="a 0600 file holding the token to present (never the token itself)",
)
@click.option("--use", "use_it", is_flag=True, help="make it the current context")
def add(name: str, managers: str, ca_file: Path | None, token_file: Path | None, use_it: bool) -> None:
    """Add a context, or replace the one of that name. It becomes current when no other is."""
    try:
        check_name(name)
        urls = manager_urls(managers)
    except (ConfigError, ClientError) as error:
        fail(str(error))
    ca = _existing_file(ca_file, "--ca-file") if ca_file is not None else None
    token = None
    if token_file is not None:
        from treeherd.transport.secret_files import InsecureSecret, read_secret

        token = _existing_file(token_file, "--token-file")
        try:
            read_secret(Path(token))
        except (InsecureSecret, OSError) as error:
            fail(str(error))
    config = _load()
    replaced = name in config.contexts
    config.contexts[name] = ClientContext(name, tuple(urls), ca, token)
    if use_it or config.current is None:
        config.current = name
    _save(config)
    current = " (current)" if config.current == name else ""
    click.echo(f"context {name} {'replaced' if replaced else 'added'}{current}", err=True)


@context.command("use")
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the current context."""
    config = _load()
    if name not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none yet: `treeherd context add`"
        fail(f"no context named {name!r} (known: {known})")
    config.current = name
    _save(config)
    click.echo(f"now using the context {name}", err=True)


@context.command("ls")
@FORMAT_OPTION
def ls(fmt: str) -> None:
    """List the contexts; the current one is marked with *."""
    config = _load()
    listing(
        fmt,
        [
            {
                "current": name == config.current,
                "name": name,
                "manager": ",".join(found.managers),
                "ca_file": found.ca_file,
                "token_file": found.token_file,
            }
            for name, found in sorted(config.contexts.items())
        ],
        ["CURRENT", "NAME", "MANAGER", "CA FILE", "TOKEN FILE"],
        lambda row: [
            "*" if row["current"] else "",
            row["name"],
            row["manager"],
            row["ca_file"] or "-",
            row["token_file"] or "-",
        ],
    )
    names = ("TREEHERD_MANAGER", "TREEHERD_TOKEN", "TREEHERD_TOKEN_FILE", "TREEHERD_CA_FILE")
    overridden = [name for name in names if os.environ.get(name)]
    if overridden and fmt == "table":
        click.echo(f"note: {', '.join(overridden)} set in the environment take precedence", err=True)


@context.command("rm")
@click.argument("name")
def rm(name: str) -> None:
    """Remove the context NAME (its CA and token files are left alone)."""
    config = _load()
    if name not in config.contexts:
        fail(f"no context named {name!r} in {config_path()}")
    del config.contexts[name]
    if config.current == name:
        config.current = None
    _save(config)
    click.echo(f"context {name} removed", err=True)


COMMANDS = [context]
