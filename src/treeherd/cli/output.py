"""How commands print: aligned tables for people, JSON for programs, errors on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import msgspec

T = TypeVar("T")

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for programs",
)


INSPECT_FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="json",
    show_default=True,
    help="json (all there is) or a table of the top-level fields",
)


def inspected(fmt: str, value: Any) -> None:
    """What an `inspect` command prints: the whole object as JSON, or its top-level fields as a table."""
    if fmt == "json":
        print_json(value)
        return
    fields = msgspec.to_builtins(value)
    print_table(["FIELD", "VALUE"], [[key, item] for key, item in fields.items()])


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned by their widest cell; an empty listing prints the headers only."""
    cells = [[str(h) for h in headers], *[[cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def listing(fmt: str, items: Sequence[T], headers: Sequence[str], row: Callable[[T], Sequence[Any]]) -> None:
    if fmt == "json":
        print_json(items)
    else:
        print_table(headers, [row(item) for item in items])


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={_scalar(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _scalar(value: Any) -> str:
    """A parameter value as it would be typed: text as is, anything else as JSON."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def human_bytes(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:g}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


def done(fmt: str, obj: Any, message: str) -> None:
    """After a write: the object as JSON, or one line saying what happened."""
    if fmt == "json":
        print_json(obj)
    else:
        click.echo(message)
