"""The in-memory store: the reference backend (tests, benchmarks); nothing survives the process."""

from __future__ import annotations

from treeherd.store.engine import DEFAULT_HISTORY, EngineStore


class MemoryStore(EngineStore):
    """An `EngineStore` without a durable log."""

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        super().__init__(None, history=history)
