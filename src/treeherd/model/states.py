"""Task and node states with SwarmKit's values, so "only forward" is a comparison.

Task states are spaced by 64: NEW 0 ... RUNNING 512, then the terminal states COMPLETE, SHUTDOWN,
FAILED, REJECTED. The manager sets a task's observed state up to ASSIGNED; the agent from ACCEPTED on.
`desired_state` is the manager's alone: RUNNING at creation, SHUTDOWN (or REMOVE-like SHUTDOWN) to stop.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal


class TaskState(IntEnum):
    NEW = 0
    ALLOCATED = 64
    PENDING = 128
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768

    # Plain attributes of each member, set below, not properties: asked several times per status
    # change, an attribute is read in about 40 ns, a property in about 95.
    terminal: bool  # a task in a terminal state never runs again
    label: str  # the name in lower case (an enum member's `name` goes through a descriptor)


# The members as module names too, for the paths that compare a task's state many times: on Python 3.11
# `TaskState.RUNNING` goes through the enum metaclass's `__getattr__` hook (about 125 ns, against 11 for
# a module global), and an agent compares each task's state some forty times over its life.
(
    NEW,
    ALLOCATED,
    PENDING,
    ASSIGNED,
    ACCEPTED,
    PREPARING,
    READY,
    STARTING,
    RUNNING,
    COMPLETE,
    SHUTDOWN,
    FAILED,
    REJECTED,
) = TaskState

for _state in TaskState:
    _state.terminal = _state >= COMPLETE
    _state.label = _state.name.lower()
del _state

# The last state the manager sets; from ACCEPTED on only the agent moves a task.
LAST_MANAGER_STATE = TaskState.ASSIGNED

NodeState = Literal["unknown", "down", "ready", "disconnected"]
Availability = Literal["active", "pause", "drain"]
NodeRole = Literal["worker", "manager"]
