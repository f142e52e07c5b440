"""`treeherd store migrate|snapshot|restore` as the real command: a cluster copied from SQLite into etcd,
snapshotted from etcd and restored into SQLite, with the same objects; refusals stop with a clear error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
from store_helpers import node, seed

from conftest import fresh_prefix
from treeherd.api.server import lock_data_dir
from treeherd.store.select import make_store
from treeherd.store.transfer import everything, ordered
from treeherd.testing.processes import treeherd_command

CLI_TIMEOUT = 30


def treeherd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*treeherd_command(), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, cwd=cwd
    )


async def contents(spec: str) -> dict[tuple[str, str], object]:
    """Every object of a store, without versions (each store stamps its own)."""
    store = make_store(spec)
    await store.open()
    try:
        return {(o.kind, o.id): msgspec.structs.replace(o, version=0) for o in everything(store)}
    finally:
        await store.close()


def test_every_object_comes_after_what_it_references():
    objects = [node("c", "a.b.c", parent="b"), node("b", "a.b", parent="a"), node("a")]
    assert [o.id for o in ordered(objects)] == ["a", "b", "c"]


async def test_migrate_to_etcd_then_snapshot_and_restore_to_sqlite(tmp_path: Path, etcd_server) -> None:
    source = f"sqlite:{tmp_path / 'source'}"
    store = make_store(source)
    await store.open()
    await seed(store)
    await store.close()
    expected = await contents(source)
    assert len(expected) == 8

    etcd = etcd_server.url(fresh_prefix())
    migrated = treeherd("store", "migrate", "--from", source, "--to", etcd)
    assert migrated.returncode == 0, migrated.stderr
    assert "copied 8 objects" in migrated.stdout
    assert await contents(etcd) == expected

    file = tmp_path / "cluster.snapshot"
    taken = treeherd("store", "snapshot", "--store", etcd, str(file))
    assert taken.returncode == 0, taken.stderr
    restored = treeherd("store", "restore", str(file), "--to", f"sqlite:{tmp_path / 'restored'}")
    assert restored.returncode == 0, restored.stderr
    assert await contents(f"sqlite:{tmp_path / 'restored'}") == expected

    again = treeherd("store", "restore", str(file), "--to", etcd)
    assert again.returncode == 1
    assert "already holds 8 objects" in again.stderr
    assert await contents(etcd) == expected


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"not msgpack at all \xc1", "is not a treeherd snapshot"), (b"\x80", "is not a treeherd snapshot")],
)
def test_a_file_that_is_not_a_snapshot_is_refused(tmp_path: Path, content: bytes, says: str) -> None:
    file = tmp_path / "bad"
    file.write_bytes(content)
    result = treeherd("store", "restore", str(file), "--to", f"sqlite:{tmp_path / 'target'}")
    assert result.returncode == 1
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "target").exists()


def test_a_store_in_use_by_a_manager_is_not_copied(tmp_path: Path, etcd_server) -> None:
    with lock_data_dir(tmp_path / "busy"):
        result = treeherd(
            "store", "migrate", "--from", f"sqlite:{tmp_path / 'busy'}", "--to", etcd_server.url()
        )
    assert result.returncode == 1
    assert "is in use by treeherd pid" in result.stderr


def test_a_sqlite_store_without_a_directory_is_refused(tmp_path: Path) -> None:
    result = treeherd("store", "snapshot", "--store", "sqlite:", str(tmp_path / "file"), cwd=tmp_path)
    assert result.returncode == 1
    assert "needs a directory" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing locked or written in the current directory
