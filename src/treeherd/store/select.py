"""Which store a manager (or `treeherd store`) opens, from what the user wrote.

`None` or `sqlite:DIR`: the embedded SQLite store in `DIR/treeherd.db` (the default, in the data
directory); `etcd://H1:2379,H2:2379[?prefix=/treeherd]`: the etcd store. A manager on etcd remembers the
cluster it joined in its data directory (`etcd-cluster`), and refuses a prefix holding another cluster.
A manager opens its store with `open_for_serving`.
"""

from __future__ import annotations

import gc
from pathlib import Path

from treeherd.model.errors import InvalidInput
from treeherd.store.engine import EngineStore
from treeherd.store.sqlite import SqliteStore

CLUSTER_FILE = "etcd-cluster"
# The cyclic collector's thresholds while a manager serves; CPython's are (700, 10, 10). See
# `open_for_serving`.
SERVING_GC_THRESHOLDS = (50_000, 10, 10)


def describe(spec: str | None, data_dir: Path | None = None) -> str:
    """How a store is named in messages."""
    if spec is None:
        return f"sqlite:{data_dir}"
    return spec


def make_store(spec: str | None, data_dir: Path | None = None) -> EngineStore:
    """The store `spec` names (not opened yet); `data_dir` is the manager's, when there is one."""
    if spec is None or spec.startswith("sqlite:"):
        path = spec.removeprefix("sqlite:") if spec else None
        directory = Path(path) if path else data_dir
        if directory is None:
            raise InvalidInput("a SQLite store needs a directory: sqlite:DIR")
        return SqliteStore(directory / "treeherd.db")
    if spec.startswith("etcd://"):
        from treeherd.store.etcd import EtcdStore  # gRPC loads in ~0.2 s: only for a manager on etcd

        cluster = None
        if data_dir is not None and (data_dir / CLUSTER_FILE).exists():
            cluster = (data_dir / CLUSTER_FILE).read_text().strip() or None
        return EtcdStore(spec, cluster=cluster)
    raise InvalidInput(
        f"{spec!r} is not a store: write etcd://HOST:PORT[,HOST:PORT...][?prefix=/treeherd] or sqlite:DIR"
    )


def remember_cluster(store: EngineStore, data_dir: Path) -> None:
    """Record in the data directory which etcd cluster this manager joined (checked at the next start)."""
    cluster = getattr(store, "cluster_id", None)
    if cluster is not None:
        (data_dir / CLUSTER_FILE).write_text(cluster + "\n")


async def open_for_serving(store: EngineStore) -> None:
    """Open the store a manager will serve from, without Python's cyclic garbage collector, and move
    what it loaded out of the collector's sight for good.

    A store of 1,000,000 tasks is several million tracked objects: while they are made, the collector's
    full passes walk all of them again and again (40 % of the load's CPU), and afterwards each full
    pass would walk them once more. Stored objects hold no reference cycles (plain data in frozen
    structs), so they are freed by reference counting alone and need no collector.

    Then the collector runs a young collection every 50,000 allocations instead of every 700
    (`SERVING_GC_THRESHOLDS`). A busy manager's objects in flight (5,000 agents' sessions, each with
    its messages, futures and buffers, and the writes of a commit) outlived the frequent young
    collections, reached the oldest generation, and set off a full pass every 2-3 s: 0.4-0.9 s
    each over a million objects, collecting nothing, 28 % of the manager's CPU in the schedule
    benchmark at 5,000 x 300,000. With fewer young collections most of them die by reference
    counting first. Garbage in cycles (a closed session's) is still collected, later.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        await store.open()
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
