"""The dispatcher's store writes: planned from the current view, committed, and planned again from the
new view when they lose a version race to another writer."""

from __future__ import annotations

import logging
from collections.abc import Callable

from treeherd.core.view import View
from treeherd.model.errors import NotFound, VersionConflict
from treeherd.model.ops import Op
from treeherd.store.base import Store

__all__ = ["COMMIT_ATTEMPTS", "commit_planned"]

# The dispatcher's logger: its records keep the component's name whichever of its modules writes them.
log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 5


async def commit_planned(store: Store, plan: Callable[[View], list[Op]], what: str) -> bool:
    """Plan against the current view and commit, planning again after a lost race. False if the
    races kept being lost; store failures raise."""
    for _ in range(COMMIT_ATTEMPTS):
        ops = plan(store.view())
        if not ops:
            return True
        try:
            await store.commit(ops)
            return True
        except (VersionConflict, NotFound) as error:
            log.debug("dispatcher write (%s) lost a race, planning again: %s", what, error)
    log.warning("dispatcher write (%s) lost %d races in a row; will retry later", what, COMMIT_ATTEMPTS)
    return False
