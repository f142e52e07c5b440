"""The agent's worker as a pure state machine: `AgentState.handle(*events) -> instructions`.

The async shell (`agent/worker.py`) feeds it what happened (assignments, runner progress, report
acknowledgements, session changes, the tasks loaded from the local DB) and executes what it returns
(start/shut down/remove runners, write the local DB, send status reports). No I/O, no clock: each
event carries `now` and a `cause_id`, and every instruction names the cause that made it.

Invariants:
- a task's observed state only moves forward; a terminal state is final; the agent sets states from
  ACCEPTED on (below that they are the manager's). A runner report that breaks this is a bug:
  `InvalidTransition` is raised, carrying the task's story, before anything changes.
- desired states only move forward too: READY (prepare, then hold: a restart waiting out its delay),
  RUNNING, then anything past RUNNING, which means stop.
- a task's spec never changes once the agent knows it: the manager replaces tasks, it never edits
  them. An assignment acts only on a change of `desired_state` or `spec_version`.
- a task missing from a full assignment set, or removed by an increment, is stopped and forgotten.
- a status is persisted before it is reported, and reported until acknowledged: unacknowledged
  reports are re-sent (latest status per task) after the session comes back.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from treeherd.core.tasks.agent_events import (
    AgentStarted,
    AssignmentsReceived,
    DeleteTask,
    Event,
    EventBase,
    HealthChanged,
    Instruction,
    InvalidTransition,
    PersistTask,
    ProceedRunner,
    RemoveRunner,
    ReportAcknowledged,
    RunnerNoted,
    RunnerProgressed,
    SendReport,
    SessionEstablished,
    SessionLost,
    ShutdownRunner,
    StartRunner,
    StoredTask,
    Transition,
    format_story,
)
from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import ACCEPTED, LAST_MANAGER_STATE, RUNNING, SHUTDOWN
from treeherd.model.wire import TaskStatusUpdate

__all__ = [
    "AgentStarted",
    "AgentState",
    "AssignmentsReceived",
    "DeleteTask",
    "Event",
    "HealthChanged",
    "Instruction",
    "InvalidTransition",
    "PersistTask",
    "ProceedRunner",
    "RemoveRunner",
    "ReportAcknowledged",
    "RunnerNoted",
    "RunnerProgressed",
    "SendReport",
    "SessionEstablished",
    "SessionLost",
    "ShutdownRunner",
    "StartRunner",
    "StoredTask",
    "Transition",
    "format_story",
]


class _Record:
    """What the agent knows of one task. Mutable, private to the state machine."""

    __slots__ = ("desired_seen", "has_runner", "spec_seen", "status", "story", "task", "touched")

    def __init__(self, task: Task, status: TaskStatus, story: list[Transition]) -> None:
        self.task = task
        self.status = status
        self.story = story
        # The manager's last (desired_state, spec_version): an assignment acts only when they change.
        self.desired_seen = task.desired_state
        self.spec_seen = task.spec_version
        # A runner is live (started, not yet terminal) in this agent's life.
        self.has_runner = False
        # Some runner ran it, now or in an earlier life: the executor may have something to clean up.
        self.touched = False


def _wants_stop(task: Task) -> bool:
    # Desired states past RUNNING (SHUTDOWN, or a REMOVE-like SHUTDOWN) all mean "stop it".
    return task.desired_state > RUNNING


class AgentState:
    """The worker's decisions. `handle` is the only mutator."""

    def __init__(
        self,
        *,
        story_limit: int = 32,
        forgotten_limit: int = 1024,
        report_window: int = 4,
        report_max: int = 10_000,
    ) -> None:
        self._tasks: dict[str, _Record] = {}
        # The tasks that publish ports or depend on services (a task's spec never changes here): what
        # the endpoint registrar and the dependency proxy look at after every change, without reading
        # every task.
        self._with_ports: dict[str, None] = {}
        self._with_dependencies: dict[str, None] = {}
        self._story_limit = story_limit
        # Stories of forgotten tasks stay a while, so `debug story` can say why a task went away.
        self._forgotten: OrderedDict[str, list[Transition]] = OrderedDict()
        self._forgotten_limit = forgotten_limit
        # Latest unsent status per task (in order of change), and reports sent but not acknowledged.
        self._outbox: dict[str, TaskStatus] = {}
        self._inflight: dict[int, list[TaskStatusUpdate]] = {}
        # A small window of unacknowledged reports: while it is full, updates gather into the next batch.
        self._report_window = report_window
        self._report_max = report_max
        self._next_report_id = 1
        self._session_id: str | None = None

    # --- queries --------------------------------------------------------------------------------

    def task_ids(self) -> set[str]:
        return set(self._tasks)

    def tasks_with_ports(self) -> list[tuple[Task, TaskStatus]]:
        """The tasks that publish host ports, with their statuses."""
        return [(self._tasks[i].task, self._tasks[i].status) for i in self._with_ports]

    def tasks_with_dependencies(self) -> list[tuple[Task, TaskStatus]]:
        """The tasks that depend on other services, with their statuses."""
        return [(self._tasks[i].task, self._tasks[i].status) for i in self._with_dependencies]

    def status(self, task_id: str) -> TaskStatus | None:
        record = self._tasks.get(task_id)
        return record.status if record else None

    def task(self, task_id: str) -> Task | None:
        record = self._tasks.get(task_id)
        return record.task if record else None

    def story(self, task_id: str) -> list[Transition]:
        record = self._tasks.get(task_id)
        if record is not None:
            return list(record.story)
        return list(self._forgotten.get(task_id, ()))

    @property
    def connected(self) -> bool:
        return self._session_id is not None

    def unacknowledged(self) -> int:
        """How many task statuses wait to be sent or acknowledged."""
        return len(self._outbox) + sum(len(updates) for updates in self._inflight.values())

    # --- the one mutator ------------------------------------------------------------------------

    def handle(self, *events: Event) -> list[Instruction]:
        out: list[Instruction] = []
        for event in events:
            if isinstance(event, RunnerProgressed):
                self._progressed(event, out)
            elif isinstance(event, AssignmentsReceived):
                self._assignments(event, out)
            elif isinstance(event, ReportAcknowledged):
                self._inflight.pop(event.report_id, None)
            elif isinstance(event, SessionEstablished):
                self._requeue_inflight()
                self._session_id = event.session_id
            elif isinstance(event, SessionLost):
                self._requeue_inflight()
                self._session_id = None
            elif isinstance(event, AgentStarted):
                self._started(event, out)
            elif isinstance(event, HealthChanged):
                self._health(event, out)
            elif isinstance(event, RunnerNoted):
                self._noted(event, out)
        if events:
            self._flush(events[-1].cause_id, out)
        return out

    # --- event handlers -------------------------------------------------------------------------

    def _started(self, event: AgentStarted, out: list[Instruction]) -> None:
        for stored in event.tasks:
            if stored.task.id in self._tasks:
                continue
            record = self._remember(stored.task, stored.status, event, "loaded from the local DB")
            record.touched = stored.status.state >= ACCEPTED
            # The manager may not have received the last statuses before the restart: say them again.
            self._queue_report(stored.task.id, stored.status)
            if not stored.status.state.terminal:
                self._start(record, event.cause_id, out)
                if _wants_stop(stored.task):
                    self._stop(record, event, out)

    def _assignments(self, event: AssignmentsReceived, out: list[Instruction]) -> None:
        if event.full:
            wanted = {task.id for task in event.updated}
            for task_id in [t for t in self._tasks if t not in wanted]:
                self._forget(task_id, event, "missing from the full assignment set", out)
        for task in event.updated:
            self._assign(task, event, out)
        for task_id in event.removed:
            if task_id in self._tasks:
                self._forget(task_id, event, "removed by the manager", out)

    def _assign(self, task: Task, event: AssignmentsReceived, out: list[Instruction]) -> None:
        record = self._tasks.get(task.id)
        if record is None:
            self._new_task(task, event, out)
            return
        if task.desired_state == record.desired_seen and task.spec_version == record.spec_seen:
            return  # nothing the agent acts on changed (the manager's copy bumps versions often)
        if task.spec_version != record.spec_seen:
            self._note(
                record,
                event,
                f"spec v{record.spec_seen} -> v{task.spec_version} not applied: a task's spec is immutable",
            )
            record.spec_seen = task.spec_version
        if task.desired_state != record.desired_seen:
            record.desired_seen = task.desired_state
            if task.desired_state < record.task.desired_state:
                self._note(
                    record, event, f"desired {task.desired_state.label} ignored: desired only goes forward"
                )
                return
            record.task = msgspec.structs.replace(record.task, desired_state=task.desired_state)
            self._note(record, event, f"desired state {task.desired_state.label}")
            out.append(PersistTask(cause_id=event.cause_id, task=record.task, status=record.status))
            if record.status.state.terminal or not record.has_runner:
                return
            if _wants_stop(task):
                self._stop(record, event, out)
            elif task.desired_state == RUNNING:
                out.append(ProceedRunner(cause_id=event.cause_id, task_id=task.id))

    def _new_task(self, task: Task, event: AssignmentsReceived, out: list[Instruction]) -> None:
        # The agent's observed state starts where the manager's copy says (ASSIGNED, normally).
        record = self._remember(task, task.status, event, "assigned")
        record.touched = task.status.state > LAST_MANAGER_STATE
        if not task.status.state.terminal and _wants_stop(task):
            # Nothing was started for it: it is shut down without a runner.
            status = TaskStatus(state=SHUTDOWN, timestamp=event.now, message="shut down before it started")
            self._set_status(record, status, event.cause_id, out)
            return
        out.append(PersistTask(cause_id=event.cause_id, task=task, status=record.status))
        if not task.status.state.terminal:
            self._start(record, event.cause_id, out)

    def _progressed(self, event: RunnerProgressed, out: list[Instruction]) -> None:
        record = self._tasks.get(event.task_id)
        if record is None:
            return  # a late report from the runner of a task already forgotten
        current = record.status.state
        if current.terminal or event.state <= current or event.state < ACCEPTED or not record.has_runner:
            story = [
                *record.story,
                Transition(state=event.state, cause_id=event.cause_id, at=event.now, message="(rejected)"),
            ]
            raise InvalidTransition(event.task_id, current, event.state, story)
        status = TaskStatus(
            state=event.state,
            timestamp=event.now,
            message=event.message,
            error=event.error,
            exit_code=event.exit_code,
            health=event.health if event.state == RUNNING else "",
        )
        self._set_status(record, status, event.cause_id, out)
        if event.state.terminal:
            record.has_runner = False

    def _health(self, event: HealthChanged, out: list[Instruction]) -> None:
        record = self._tasks.get(event.task_id)
        # Health matters only while the task runs; a late result after it stopped is dropped.
        if record is None or record.status.state != RUNNING or record.status.health == event.health:
            return
        status = msgspec.structs.replace(
            record.status,
            health=event.health,
            timestamp=event.now,
            message=event.message or record.status.message,
        )
        self._set_status(record, status, event.cause_id, out)

    def _noted(self, event: RunnerNoted, out: list[Instruction]) -> None:
        record = self._tasks.get(event.task_id)
        # News of a running task only; a late note after it stopped is dropped.
        if record is None or record.status.state != RUNNING or record.status.message == event.message:
            return
        status = msgspec.structs.replace(record.status, timestamp=event.now, message=event.message)
        self._set_status(record, status, event.cause_id, out)

    # --- helpers --------------------------------------------------------------------------------

    def _remember(self, task: Task, status: TaskStatus, event: EventBase, why: str) -> _Record:
        record = _Record(task, status, self._forgotten.pop(task.id, []))
        self._tasks[task.id] = record
        if task.ports:
            self._with_ports[task.id] = None
        if task.spec.depends_on:
            self._with_dependencies[task.id] = None
        self._note(record, event, why)
        return record

    def _note(self, record: _Record, event: EventBase, message: str) -> None:
        self._add_to_story(
            record,
            Transition(state=record.status.state, cause_id=event.cause_id, at=event.now, message=message),
        )

    def _add_to_story(self, record: _Record, transition: Transition) -> None:
        """Add to the task's story, which keeps its last `story_limit` transitions. A list, not a
        bounded deque: a deque's first block takes about 0.8 kB, for a story of two or three
        transitions, on every task an agent holds."""
        story = record.story
        story.append(transition)
        if len(story) > self._story_limit:
            del story[: len(story) - self._story_limit]

    def _set_status(self, record: _Record, status: TaskStatus, cause_id: str, out: list[Instruction]) -> None:
        record.status = status
        self._add_to_story(
            record,
            Transition(
                state=status.state,
                cause_id=cause_id,
                at=status.timestamp,
                message=status.error or status.message,
            ),
        )
        out.append(PersistTask(cause_id=cause_id, task=record.task, status=status))
        self._queue_report(record.task.id, status)

    def _start(self, record: _Record, cause_id: str, out: list[Instruction]) -> None:
        record.has_runner = True
        record.touched = True
        out.append(StartRunner(cause_id=cause_id, task=record.task, status=record.status))

    def _stop(self, record: _Record, event: EventBase, out: list[Instruction]) -> None:
        if record.has_runner:
            out.append(ShutdownRunner(cause_id=event.cause_id, task_id=record.task.id))

    def _forget(self, task_id: str, event: EventBase, why: str, out: list[Instruction]) -> None:
        record = self._tasks.pop(task_id)
        self._with_ports.pop(task_id, None)
        self._with_dependencies.pop(task_id, None)
        self._note(record, event, f"forgotten: {why}")
        if record.touched:
            out.append(
                RemoveRunner(cause_id=event.cause_id, task=record.task, finished=record.status.state.terminal)
            )
        out.append(DeleteTask(cause_id=event.cause_id, task_id=task_id))
        # The manager no longer tracks it: its pending statuses would only be noise.
        self._outbox.pop(task_id, None)
        self._forgotten[task_id] = record.story
        while len(self._forgotten) > self._forgotten_limit:
            self._forgotten.popitem(last=False)

    def _queue_report(self, task_id: str, status: TaskStatus) -> None:
        # Re-insert so the outbox stays in order of change; only the latest status matters.
        self._outbox.pop(task_id, None)
        self._outbox[task_id] = status

    def _requeue_inflight(self) -> None:
        """Reports of a lost session will never be acknowledged: send again what they were about,
        with each task's current status (the manager needs only the latest)."""
        if not self._inflight:
            return
        order: dict[str, None] = {}
        for report_id in sorted(self._inflight):
            order.update(dict.fromkeys(update.task_id for update in self._inflight[report_id]))
        order.update(dict.fromkeys(self._outbox))
        self._outbox = {task_id: self._tasks[task_id].status for task_id in order if task_id in self._tasks}
        self._inflight.clear()

    def _flush(self, cause_id: str, out: list[Instruction]) -> None:
        if self._session_id is None:
            return
        while self._outbox and len(self._inflight) < self._report_window:
            batch: list[TaskStatusUpdate] = []
            for task_id in list(self._outbox)[: self._report_max]:
                batch.append(TaskStatusUpdate(task_id=task_id, status=self._outbox.pop(task_id)))
            report_id = self._next_report_id
            self._next_report_id += 1
            self._inflight[report_id] = batch
            out.append(SendReport(cause_id=cause_id, report_id=report_id, updates=batch))
