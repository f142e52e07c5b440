"""The worker: the async shell around `core.tasks.agent_state.AgentState`.

It turns what happens (assignments and acknowledgements from the session, progress of task runners,
the tasks in the local DB at start) into events, feeds them to the state machine in batches (every
event queued by the time the loop comes round goes into one `handle` call, so a burst of runner
progress becomes one status report), and executes the instructions in a fixed order: local DB writes
first, in one transaction, so nothing is reported or started that a restart would not know; then
runners; then reports, which a separate reporter task hands to the session.

Stopping the worker detaches from the tasks instead of stopping them: the next agent resumes them
from the local DB, as SwarmKit's agent does with its containers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from treeherd.agent.db import TaskDB
from treeherd.agent.health import HealthCheckers, default_context
from treeherd.agent.taskrunner import Progress, TaskRunner
from treeherd.core.tasks.agent_state import (
    AgentStarted,
    AgentState,
    AssignmentsReceived,
    DeleteTask,
    Event,
    HealthChanged,
    Instruction,
    PersistTask,
    ProceedRunner,
    RemoveRunner,
    ReportAcknowledged,
    RunnerProgressed,
    SendReport,
    SessionEstablished,
    SessionLost,
    ShutdownRunner,
    StartRunner,
)
from treeherd.executors.base import CommandContexts, Executor
from treeherd.model.discovery import Health
from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import Assignments, TaskStatusUpdate
from treeherd.runtime import utc_now

__all__ = ["SendReportFn", "Worker"]

log = logging.getLogger(__name__)

SendReportFn = Callable[[int, list[TaskStatusUpdate]], Awaitable[None]]


class Worker:
    """Feeds events to the agent's state machine and carries out its instructions."""

    def __init__(
        self,
        executor: Executor,
        db: TaskDB,
        *,
        now: Callable[[], datetime] = utc_now,
        grace_s: float = 10.0,
        state: AgentState | None = None,
    ) -> None:
        self.executor = executor
        self.state = state or AgentState()
        self.runners: dict[str, TaskRunner] = {}
        self._db = db
        self._now = now
        self._grace_s = grace_s
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reports: asyncio.Queue[SendReport | None] = asyncio.Queue()
        self._send: SendReportFn | None = None
        self._removals: set[asyncio.Task[None]] = set()
        self._causes = itertools.count(1)
        self._stopping = False
        self.health = HealthCheckers(
            self._health_changed,
            executor.command_context if isinstance(executor, CommandContexts) else default_context,
        )
        # Called after each batch of instructions ran (the endpoint registrar listens).
        self.on_change: Callable[[], None] | None = None

    # --- inputs (from the session and the agent; never block) ------------------------------------

    def set_sender(self, send: SendReportFn | None) -> None:
        """How reports reach the manager (the session's `send_report`)."""
        self._send = send

    def session_started(self, session_id: str) -> None:
        self._put(SessionEstablished(cause_id=self._cause("session"), now=self._now(), session_id=session_id))

    def session_lost(self, reason: str) -> None:
        self._put(SessionLost(cause_id=self._cause("session-lost"), now=self._now(), reason=reason))

    def assignments(self, message: Assignments) -> None:
        self._put(
            AssignmentsReceived(
                cause_id=self._cause(f"assignments-{message.sequence}"),
                now=self._now(),
                full=message.full,
                updated=message.updated,
                removed=message.removed,
            )
        )

    def acknowledged(self, report_id: int) -> None:
        self._put(ReportAcknowledged(cause_id=self._cause("ack"), now=self._now(), report_id=report_id))

    def _progressed(self, task_id: str, progress: Progress) -> None:
        self._put(
            RunnerProgressed(
                cause_id=self._cause(f"runner-{progress.state.label}"),
                now=self._now(),
                task_id=task_id,
                state=progress.state,
                message=progress.message,
                error=progress.error,
                exit_code=progress.exit_code,
            )
        )

    def _health_changed(self, task_id: str, health: Health, message: str) -> None:
        self._put(
            HealthChanged(
                cause_id=self._cause(f"health-{health}"),
                now=self._now(),
                task_id=task_id,
                health=health,
                message=message,
            )
        )
        task = self.state.task(task_id)
        runner = self.runners.get(task_id)
        check = task.spec.health if task is not None else None
        wants_restart = health == "unhealthy" and check is not None and check.restart
        if wants_restart and runner is not None and not runner.done:
            log.warning("task %s is unhealthy: failing it (%s)", task_id, message)
            runner.fail(f"unhealthy: {message}")

    def _put(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _cause(self, kind: str) -> str:
        return f"{kind}#{next(self._causes)}"

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the local DB, then handle events until stopped. An invalid transition ends it loudly."""
        stored = await self._db.load()
        self._put(AgentStarted(cause_id=self._cause("agent-start"), now=self._now(), tasks=stored))
        reporter = asyncio.create_task(self._reporter(), name="agent-reporter")
        try:
            while not self._stopping:
                first = await self._events.get()
                batch = [first] if first is not None else []
                while not self._events.empty():
                    event = self._events.get_nowait()
                    if event is not None:
                        batch.append(event)
                if self._stopping or not batch:
                    break
                await self._execute(self.state.handle(*batch))
                if self.on_change is not None:
                    self.on_change()
        finally:
            reporter.cancel()
            await self._detach()

    def stop(self) -> None:
        self._stopping = True
        self._events.put_nowait(None)

    async def _detach(self) -> None:
        # Leave the tasks running for the next agent; only removals already under way are finished.
        self.health.stop_all()
        for runner in self.runners.values():
            runner.cancel()
        waits = [runner.join(1.0) for runner in self.runners.values()]
        await asyncio.gather(*waits)
        if self._removals:
            await asyncio.wait(self._removals, timeout=self._grace_s)

    async def _execute(self, instructions: Sequence[Instruction]) -> None:
        writes: dict[str, tuple[Task, TaskStatus] | None] = {}
        for instruction in instructions:
            if isinstance(instruction, PersistTask):
                writes[instruction.task.id] = (instruction.task, instruction.status)
            elif isinstance(instruction, DeleteTask):
                writes[instruction.task_id] = None
        if writes:
            puts = [row for row in writes.values() if row is not None]
            deletes = [task_id for task_id, row in writes.items() if row is None]
            await self._db.write(puts, deletes)
        for instruction in instructions:
            if isinstance(instruction, PersistTask):
                self._follow_health(instruction.task, instruction.status.state)
            elif isinstance(instruction, DeleteTask):
                self.health.stop(instruction.task_id)
        for instruction in instructions:
            if isinstance(instruction, StartRunner):
                self._start(instruction.task, instruction.status.state)
            elif isinstance(instruction, ShutdownRunner):
                runner = self.runners.get(instruction.task_id)
                if runner is not None:
                    runner.shutdown()
            elif isinstance(instruction, ProceedRunner):
                runner = self.runners.get(instruction.task_id)
                if runner is not None:
                    runner.proceed()
            elif isinstance(instruction, RemoveRunner):
                self._remove(instruction.task)
            elif isinstance(instruction, SendReport):
                self._reports.put_nowait(instruction)

    def _follow_health(self, task: Task, state: TaskState) -> None:
        """Health checks run while the task runs and it is meant to."""
        if state == TaskState.RUNNING and task.desired_state <= TaskState.RUNNING:
            self.health.start(task)
        else:
            self.health.stop(task.id)

    def _start(self, task: Task, state: TaskState) -> None:
        if state == TaskState.RUNNING:  # resumed after an agent restart: it reports no new state
            self._follow_health(task, state)
        previous = self.runners.get(task.id)
        if previous is not None and not previous.done:
            log.warning("task %s: a runner is already running; not starting another", task.id)
            return
        runner = TaskRunner(task, state, self.executor, self._progressed, grace_s=task.spec.stop_grace_s)
        self.runners[task.id] = runner
        runner.start()

    def _remove(self, task: Task) -> None:
        # A runner that never ran in this agent's life (the task ended before a restart) still gets a
        # controller to clean up with: remove() makes one.
        runner = self.runners.pop(task.id, None) or TaskRunner(
            task, TaskState.SHUTDOWN, self.executor, self._progressed, grace_s=task.spec.stop_grace_s
        )
        removal = asyncio.create_task(runner.remove(), name=f"task-remove-{task.id}")
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _reporter(self) -> None:
        """Hands reports to the session. A report that cannot be sent is not retried here: the state
        keeps it until acknowledged and re-sends it when the session comes back."""
        while True:
            report = await self._reports.get()
            if report is None:
                return
            send = self._send
            if send is None:
                continue
            try:
                await send(report.report_id, report.updates)
            except Exception as error:
                log.debug("report %d not sent: %s", report.report_id, error)
