"""Opening a store for a manager: the objects loaded are out of the cyclic collector's sight, the
collector is enabled or not as it was before, and runs its young collections less often."""

from __future__ import annotations

import gc
from pathlib import Path

from store_helpers import machine

from treeherd.model.objects import Machine
from treeherd.model.ops import Create
from treeherd.store.select import SERVING_GC_THRESHOLDS, open_for_serving
from treeherd.store.sqlite import SqliteStore


async def test_open_for_serving_freezes_what_it_loaded_and_restores_the_collector(tmp_path: Path):
    path = tmp_path / "treeherd.db"
    store = SqliteStore(path)
    await store.open()
    await store.commit([Create(machine(f"m{i}")) for i in range(50)])
    await store.close()
    plain = SqliteStore(path)
    await plain.open()
    loaded = plain.view().get(Machine, "m7")
    assert any(obj is loaded for obj in gc.get_objects())  # a plain open: the collector tracks it
    await plain.close()
    del loaded

    reopened = SqliteStore(path)
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        await open_for_serving(reopened)
        assert gc.isenabled()
        loaded = reopened.view().get(Machine, "m7")
        assert loaded is not None
        assert gc.get_freeze_count() > 0
        assert not any(obj is loaded for obj in gc.get_objects())  # frozen: no generation holds it
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS  # young collections far rarer
        gc.disable()
        other = SqliteStore(tmp_path / "other.db")
        await open_for_serving(other)
        await other.close()
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        await reopened.close()
