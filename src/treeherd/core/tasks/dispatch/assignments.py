"""The set of tasks an agent is told about: which tasks an agent must know, the full list that starts
(or restarts) its stream, and the increments that follow store events.

An agent is told about a task on its machine from ASSIGNED on until the task has ended and the manager
wants it shut down; a change the agent itself reported (status only) is not echoed back.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from treeherd.model.events import Event
from treeherd.model.services import Task
from treeherd.model.states import LAST_MANAGER_STATE, TaskState
from treeherd.model.wire import Assignments


def agent_should_know(task: Task, node_id: str) -> bool:
    """Whether the agent on `node_id` must know `task`: it is on that machine, the scheduler assigned
    it, and it has not both ended and been asked to shut down (then the agent may forget it)."""
    if task.machine_id != node_id or task.status.state < TaskState.ASSIGNED:
        return False
    return not (task.status.state.terminal and task.desired_state >= TaskState.SHUTDOWN)


def _same_for_agent(old: Task, new: Task) -> bool:
    """Equal but for what the agent itself reports (status) and the store's bookkeeping."""
    return (
        msgspec.structs.replace(old, status=new.status, version=new.version, updated_at=new.updated_at) == new
    )


class AssignmentSet:
    """The tasks one agent knows, and the changes not yet sent to it.

    `full()` starts (or restarts) the stream with every task; `apply()` folds in store events;
    `increment()` returns the next message, if anything changed. Sequence numbers grow by one per
    message. A removal may name a task the agent was never sent (added and removed within one batch);
    agents ignore removals of tasks they do not know.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sequence = 0
        self._known: dict[str, Task] = {}
        self._updated: dict[str, Task] = {}
        self._removed: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._known)

    @property
    def changed(self) -> int:
        """How many task changes wait for the next increment."""
        return len(self._updated) + len(self._removed)

    def full(self, tasks: Iterable[Task]) -> Assignments:
        self._known = {
            t.id: t for t in sorted(tasks, key=lambda t: t.id) if agent_should_know(t, self.node_id)
        }
        self._updated.clear()
        self._removed.clear()
        self.sequence += 1
        return Assignments(full=True, sequence=self.sequence, updated=list(self._known.values()))

    def apply(self, event: Event) -> bool:
        """Fold one store event in; True if the agent must hear about it."""
        task = event.object
        if not isinstance(task, Task):
            return False
        if event.type == "deleted" or not agent_should_know(task, self.node_id):
            return self._remove(task.id)
        old = self._known.get(task.id)
        self._known[task.id] = task
        # States up to ASSIGNED are the manager's: the agent must hear about them even when nothing
        # else changed. Past that, a status-only change came from the agent itself.
        if old is not None and task.status.state > LAST_MANAGER_STATE and _same_for_agent(old, task):
            if task.id in self._updated:
                self._updated[task.id] = task
            return False
        self._updated[task.id] = task
        self._removed.pop(task.id, None)
        return True

    def _remove(self, task_id: str) -> bool:
        if self._known.pop(task_id, None) is None:
            return False
        self._updated.pop(task_id, None)
        self._removed[task_id] = None
        return True

    def increment(self) -> Assignments | None:
        if not self._updated and not self._removed:
            return None
        self.sequence += 1
        message = Assignments(
            full=False,
            sequence=self.sequence,
            updated=list(self._updated.values()),
            removed=list(self._removed),
        )
        self._updated.clear()
        self._removed.clear()
        return message
