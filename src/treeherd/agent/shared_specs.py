"""One task spec object for all the tasks of one version of a service that an agent holds.

Every task the manager assigns carries its service's spec, decoded into objects of its own: about
940 bytes of a hollow task's 1,800, and the same for every replica of the service. An agent that holds
many tasks (hundreds of a big service, or the benchmark's hollow agents, tens of thousands per
process) keeps one of them per service version and lets the others go. A spec is shared only when it
is equal to the one kept: the version is a hint, not a promise.
"""

from __future__ import annotations

import msgspec

from treeherd.core.tasks.agent_events import StoredTask
from treeherd.model.services import Task, TaskSpec

__all__ = ["SharedSpecs"]

# Service versions remembered; past it the oldest is forgotten (its tasks keep the spec they have).
LIMIT = 1024


class SharedSpecs:
    """Swaps a task's spec for an equal one already held, by (service, spec version)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._specs: dict[tuple[str, int], TaskSpec] = {}
        self._limit = limit

    def share(self, task: Task) -> Task:
        """`task`, with the spec held for its service version if that is equal to its own."""
        key = (task.service_id, task.spec_version)
        held = self._specs.get(key)
        if held is None or held != task.spec:
            if held is None and len(self._specs) >= self._limit:
                del self._specs[next(iter(self._specs))]
            self._specs[key] = task.spec
            return task
        if held is task.spec:
            return task
        return msgspec.structs.replace(task, spec=held)

    def share_all(self, tasks: list[Task]) -> list[Task]:
        return [self.share(task) for task in tasks]

    def share_stored(self, row: StoredTask) -> StoredTask:
        """A task of the local DB, its spec shared."""
        task = self.share(row.task)
        return row if task is row.task else msgspec.structs.replace(row, task=task)
