"""`treeherd store migrate|snapshot|restore`: copy a cluster between stores, back one up to a file.

A store is named as `manager --store` names it (`etcd://H1:2379[,H2:2379][?prefix=/treeherd]`) or as
`sqlite:DIR` (the data directory of a manager on the embedded store). A SQLite store is locked while it
is read or written, so a manager running on it makes the command fail instead of racing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import click

from treeherd.cli.output import fail


@contextlib.contextmanager
def _locked(spec: str) -> Iterator[None]:
    from treeherd.api.server import lock_data_dir

    if spec.startswith("sqlite:"):
        directory = spec.removeprefix("sqlite:")
        if not directory:
            fail("a SQLite store needs a directory: sqlite:DIR")
        with lock_data_dir(Path(directory)):
            yield
    else:
        yield


@contextlib.asynccontextmanager
async def _opened(spec: str) -> AsyncIterator[Any]:
    from treeherd.store.select import make_store

    store = make_store(spec)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _run(work: Any) -> Any:
    import asyncio

    from treeherd.api.server import StartupError
    from treeherd.model.errors import TreeherdError

    try:
        return asyncio.run(work)
    except (StartupError, TreeherdError, OSError) as error:
        fail(str(error))


@click.group("store")
def store() -> None:
    """Copy a cluster between stores (SQLite, etcd); back one up to a file and restore it."""


@store.command("migrate")
@click.option("--from", "source", required=True, metavar="STORE", help="sqlite:DIR or etcd://...")
@click.option(
    "--to", "target", required=True, metavar="STORE", help="an empty store: etcd://... or sqlite:DIR"
)
def migrate(source: str, target: str) -> None:
    """Copy every object of one store into another, empty one (stop the managers of both first)."""
    from treeherd.store.transfer import copy_into, everything

    async def work() -> None:
        with _locked(source), _locked(target):
            async with _opened(source) as src, _opened(target) as dst:
                objects = everything(src)
                revision = await copy_into(dst, objects)
        click.echo(f"copied {len(objects)} objects from {source} to {target} (now at revision {revision})")

    _run(work())


@store.command("snapshot")
@click.option("--store", "spec", required=True, metavar="STORE", help="sqlite:DIR or etcd://...")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def snapshot(spec: str, file: Path) -> None:
    """Write every object of a store to FILE (an etcd store may be in use meanwhile)."""
    from treeherd.store.transfer import encode_snapshot, everything

    async def work() -> tuple[int, int, bytes]:
        with _locked(spec):
            async with _opened(spec) as src:
                objects = everything(src)
                return len(objects), src.revision, encode_snapshot(src.revision, objects)

    objects, revision, data = _run(work())
    partial = file.with_name(file.name + ".partial")
    try:
        partial.write_bytes(data)
        partial.replace(file)
    except OSError as error:
        fail(f"cannot write {file}: {error.strerror}")
    click.echo(f"wrote {objects} objects at revision {revision} to {file}")


@store.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--to", "target", required=True, metavar="STORE", help="an empty store: etcd://... or sqlite:DIR"
)
def restore(file: Path, target: str) -> None:
    """Create the objects of a snapshot FILE in an empty store."""
    from treeherd.model.errors import InvalidInput
    from treeherd.store.transfer import copy_into, decode_snapshot

    try:
        taken_at, objects = decode_snapshot(file.read_bytes(), str(file))
    except InvalidInput as error:
        fail(str(error))

    async def work() -> None:
        with _locked(target):
            async with _opened(target) as dst:
                revision = await copy_into(dst, objects)
        click.echo(
            f"restored {len(objects)} objects (snapshot revision {taken_at}) into {target} (now at revision {revision})"
        )

    _run(work())


COMMANDS = [store]
