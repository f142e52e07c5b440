"""What a task runner tells the worker: each state it reached (`Progress`), and how an exit and a start
are put in words."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import msgspec

from treeherd.executors.base import Controller, Exit, Warnings
from treeherd.model.discovery import Health
from treeherd.model.states import TaskState

__all__ = ["Progress", "Report", "describe_exit", "started_message"]


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """A state the runner reached, as it tells the worker."""

    state: TaskState
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    # RUNNING: the health the task starts with ("starting" when its controller knows it will be judged).
    health: Health = ""
    # News of the running task in `message`, not a new state (`state` is the one it is in).
    note: bool = False


Report = Callable[[str, Progress], None]


def describe_exit(exit: Exit) -> str:
    """Why a task ended, for a FAILED report."""
    if exit.out_of_memory:
        return "out of memory"
    if exit.signal is not None:
        return f"killed by signal {exit.signal}"
    return f"exit code {exit.code}"


def started_message(controller: Controller) -> str:
    """The RUNNING message: "started", with what the task runs without (limits not enforced here)."""
    # hasattr is what isinstance of a runtime protocol checks, without walking the protocol's members
    # anew for every task (that was a fifth of an agent's CPU when it starts thousands of tasks).
    warnings = cast(Warnings, controller).warnings if hasattr(controller, "warnings") else []
    return f"started; warning: {'; '.join(warnings)}" if warnings else "started"
