"""Every command that shows or lists something can print it as JSON for programs."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import click

from tests.conftest import Cli
from treeherd.cli.main import cli as main

NAMES = {"show", "inspect", "ls"}


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def takes_json(command: click.Command) -> bool:
    for param in command.params:
        if isinstance(param, click.Option) and "--format" in param.opts:
            return isinstance(param.type, click.Choice) and "json" in param.type.choices
    return False


def test_every_show_inspect_and_ls_takes_format_json() -> None:
    found = [(name, command) for name, command in commands(main) if name.rsplit(" ", 1)[-1] in NAMES]
    assert len(found) >= 10  # the walk reaches the nested groups (tree, service, gateway backend...)
    assert [name for name, command in found if not takes_json(command)] == []


def test_nodes_are_named_by_hostname_or_id_and_show_as_json_what_the_table_shows(cli: Cli) -> None:
    suffix = secrets.token_hex(4)
    host, path = f"n-{suffix}", f"f{suffix}"
    cli("tree", "add", path)
    cli("machine", "add", host, "--ip", "127.0.0.12")
    cli("machine", "bind", host, path, "--weight", "3")
    shown = json.loads(cli("machine", "show", host, "--format", "json").stdout)
    assert [(b["path"], b["weight"]) for b in shown["bindings"]] == [(path, 3)]
    node_id = shown["id"]

    by_id = json.loads(cli("node", "inspect", node_id).stdout)
    assert by_id["hostname"] == host and by_id == json.loads(cli("node", "inspect", host).stdout)
    table = cli("node", "inspect", node_id[:8], "--format", "table").stdout
    assert [host] in [line.split()[1:] for line in table.splitlines() if line.startswith("hostname ")]
    assert "updated " + host in cli("node", "update", node_id, "--availability", "pause").stdout
    assert json.loads(cli("node", "inspect", host).stdout)["availability"] == "pause"
    missing = cli("node", "inspect", "no-such-node", check=False)
    assert missing.returncode != 0 and "no-such-node" in missing.stderr
    assert f"removed {host}" in cli("node", "rm", node_id, "--force").stdout
    assert cli("node", "inspect", host, check=False).returncode != 0
