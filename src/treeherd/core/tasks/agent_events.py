"""The vocabulary of the agent's state machine: the events it takes, the instructions it gives, the
task records it persists, and the story of transitions it keeps for `debug story`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from treeherd.model.discovery import Health
from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import TaskStatusUpdate


class StoredTask(msgspec.Struct, frozen=True, kw_only=True):
    """A task as the local DB keeps it: the manager's copy and the agent's last observed status."""

    task: Task
    status: TaskStatus


# --- events -------------------------------------------------------------------------------------


class EventBase(msgspec.Struct, frozen=True, kw_only=True):
    cause_id: str
    now: datetime


class AgentStarted(EventBase, frozen=True, kw_only=True):
    """The agent (re)started; these tasks were in its local DB."""

    tasks: list[StoredTask] = []


class AssignmentsReceived(EventBase, frozen=True, kw_only=True):
    """The manager's assignments: the full set, or an increment (updated tasks, removed ids)."""

    full: bool
    updated: list[Task] = []
    removed: list[str] = []


class RunnerProgressed(EventBase, frozen=True, kw_only=True):
    """A task runner reached a new observed state (RUNNING with the health it starts with: "starting"
    when its executor already knows it will be judged, e.g. by its image's own health check)."""

    task_id: str
    state: TaskState
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    health: Health = ""


class RunnerNoted(EventBase, frozen=True, kw_only=True):
    """A running task's executor has news that is not a new state (its engine went away, came back):
    the status message says it."""

    task_id: str
    message: str


class ReportAcknowledged(EventBase, frozen=True, kw_only=True):
    report_id: int


class SessionLost(EventBase, frozen=True, kw_only=True):
    reason: str = ""


class SessionEstablished(EventBase, frozen=True, kw_only=True):
    session_id: str


class HealthChanged(EventBase, frozen=True, kw_only=True):
    """The health checker of a running task found it in a new health."""

    task_id: str
    health: Health
    message: str = ""


Event = (
    AgentStarted
    | HealthChanged
    | AssignmentsReceived
    | RunnerProgressed
    | RunnerNoted
    | ReportAcknowledged
    | SessionLost
    | SessionEstablished
)


# --- instructions -------------------------------------------------------------------------------


class _Instruction(msgspec.Struct, frozen=True, kw_only=True):
    cause_id: str


class StartRunner(_Instruction, frozen=True, kw_only=True):
    """Run the task from `status.state` on (a resumed RUNNING task goes straight to wait)."""

    task: Task
    status: TaskStatus


class ProceedRunner(_Instruction, frozen=True, kw_only=True):
    """Desired state moved up to RUNNING: a runner holding at READY starts the task."""

    task_id: str


class ShutdownRunner(_Instruction, frozen=True, kw_only=True):
    """Stop the task; its runner reports the terminal state."""

    task_id: str


class RemoveRunner(_Instruction, frozen=True, kw_only=True):
    """Forget the task: stop its runner if it still runs, then clean up what prepare made.
    `finished`: the task had ended (its output is worth keeping for a while)."""

    task: Task
    finished: bool = False


class PersistTask(_Instruction, frozen=True, kw_only=True):
    task: Task
    status: TaskStatus


class DeleteTask(_Instruction, frozen=True, kw_only=True):
    task_id: str


class SendReport(_Instruction, frozen=True, kw_only=True):
    """One batched status report; kept by the state until `ReportAcknowledged(report_id)`."""

    report_id: int
    updates: list[TaskStatusUpdate]


Instruction = (
    StartRunner | ProceedRunner | ShutdownRunner | RemoveRunner | PersistTask | DeleteTask | SendReport
)


# --- the story of a task ------------------------------------------------------------------------


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a task's story: the state it was in, why, and when."""

    state: TaskState
    cause_id: str
    at: datetime
    message: str = ""


def format_story(story: Sequence[Transition]) -> str:
    """A story as `debug story` prints it: one transition a line."""
    return "\n".join(
        f"  {t.at.isoformat()} {t.state.label:<10} [{t.cause_id}] {t.message}".rstrip() for t in story
    )


class InvalidTransition(Exception):
    """A runner reported a state the task cannot move to; carries the task's story."""

    def __init__(self, task_id: str, current: TaskState, new: TaskState, story: Sequence[Transition]) -> None:
        self.task_id = task_id
        self.current = current
        self.new = new
        self.story = list(story)
        super().__init__(
            f"task {task_id}: invalid transition {current.label} -> {new.label}\n{format_story(story)}"
        )
