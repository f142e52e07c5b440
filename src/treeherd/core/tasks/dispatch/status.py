"""Validation of the task statuses an agent reports: the verdict on each one against the stored task
and the status already queued for it.

An agent moves its tasks only from ACCEPTED on, only forward, and only tasks on its own machine; a
status equal to or behind the stored one is dropped, and a task that ended stays ended.
"""

from __future__ import annotations

import enum

from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import LAST_MANAGER_STATE


class Verdict(enum.Enum):
    """What becomes of one status update an agent reports."""

    ACCEPT = "accept"  # newer than anything stored or queued: queue it
    QUEUED = "queued"  # the same state is queued already (a retried report): wait for that write
    DUPLICATE = "duplicate"  # the stored state already: dropped
    BACKWARD = "backward"  # behind the stored state: dropped
    STALE = "stale"  # behind a state already queued: dropped
    ENDED = "ended"  # the task already ended: dropped
    UNKNOWN_TASK = "unknown_task"  # no such task (it may have been deleted): rejected
    NOT_ON_NODE = "not_on_node"  # the task is not on the reporting machine: rejected
    MANAGER_STATE = "manager_state"  # a state only the manager sets: rejected

    @property
    def rejected(self) -> bool:
        """The agent broke the protocol (or lost a race with a deletion), as opposed to a normal drop."""
        return self in (Verdict.UNKNOWN_TASK, Verdict.NOT_ON_NODE, Verdict.MANAGER_STATE)


def check_status(
    task: Task | None, node_id: str, status: TaskStatus, *, queued: TaskStatus | None = None
) -> Verdict:
    """Judge one reported status against the stored task and the status already queued for it."""
    if task is None:
        return Verdict.UNKNOWN_TASK
    if task.machine_id != node_id:
        return Verdict.NOT_ON_NODE
    if status.state <= LAST_MANAGER_STATE:
        return Verdict.MANAGER_STATE
    ahead = moves_forward(status, task.status)
    if ahead is None:
        return Verdict.DUPLICATE
    if not ahead:
        return Verdict.BACKWARD
    if task.status.state.terminal:
        return Verdict.ENDED
    if queued is not None:
        ahead_of_queued = moves_forward(status, queued)
        if ahead_of_queued is None:
            return Verdict.QUEUED
        if not ahead_of_queued:
            return Verdict.STALE
    return Verdict.ACCEPT


def moves_forward(status: TaskStatus, than: TaskStatus) -> bool | None:
    """Whether `status` is news after `than`: a later state, or in the same state a different health
    or message reported later. None: the same news (a retried report)."""
    if status.state != than.state:
        return status.state > than.state
    if status.health == than.health and status.message == than.message:
        return None
    return status.timestamp > than.timestamp
