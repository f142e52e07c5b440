"""The worker: the async shell around `core.tasks.agent_state.AgentState`.

It turns what happens (assignments and acknowledgements from the session, progress of task runners,
the tasks in the local DB at start) into events, feeds them to the state machine in batches (every
event queued by the time the loop comes round goes into one `handle` call, so a burst of runner
progress becomes one status report, and of the states one runner passed meanwhile only the last is
handed over), and executes the instructions in a fixed order: local DB writes
first, in one transaction, so nothing is reported or started that a restart would not know; then
runners; then reports, which a separate reporter task hands to the session.

A task whose host port is in use here is rejected before it starts (`agent.ports`). A task that
failed reports the last line of its output with its error, so `service ps` says why. A
finished task's output is moved aside (`agent.kept_logs`) before its directory is removed.

Stopping the worker detaches from the tasks instead of stopping them (live restore, the default): the
next agent resumes them from the local DB, as SwarmKit's agent does with its containers. Without live
restore it stops every task first (as `treeherd up` does on a clean stop) and records their SHUTDOWN
in the local DB, which the next agent reports.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path

import msgspec

from treeherd.agent.db import TaskDB
from treeherd.agent.health import HealthCheckers, default_context
from treeherd.agent.kept_logs import KeptLogs
from treeherd.agent.ports import busy_port
from treeherd.agent.progress import Progress
from treeherd.agent.taskrunner import SLACK_S, TaskRunner
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
    RunnerNoted,
    RunnerProgressed,
    SendReport,
    SessionEstablished,
    SessionLost,
    ShutdownRunner,
    StartRunner,
    StoredTask,
)
from treeherd.executors import logfiles
from treeherd.executors.base import CommandContexts, Executor, FatalError, ImageHealth, RunsBeside
from treeherd.executors.process import ProcessExecutor, TaskFiles
from treeherd.model.discovery import Health
from treeherd.model.services import Task, TaskStatus
from treeherd.model.states import FAILED, RUNNING, SHUTDOWN, TaskState
from treeherd.model.wire import Assignments, TaskStatusUpdate
from treeherd.runtime import utc_now
from treeherd.store.codec import SharedSpecs

__all__ = ["SendReportFn", "Worker"]

log = logging.getLogger(__name__)

SendReportFn = Callable[[int, list[TaskStatusUpdate]], Awaitable[None]]


class _QueuedProgress:
    """A runner's progress the state machine has not seen yet, with when it came (its event is made
    when the loop takes the batch, unless a later state of the task supersedes it first)."""

    __slots__ = ("now", "progress", "task_id")

    def __init__(self, task_id: str, progress: Progress, now: datetime) -> None:
        self.task_id = task_id
        self.progress = progress
        self.now = now


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
        kept_logs: KeptLogs | None = None,
        live_restore: bool = True,
        hostname: str = "",
    ) -> None:
        self.executor = executor
        self.kept_logs = kept_logs
        self.live_restore = live_restore
        self.hostname = hostname or socket.gethostname()
        # How many tasks were left running by the last stop (with live restore).
        self.left_running = 0
        self.state = state or AgentState()
        self.runners: dict[str, TaskRunner] = {}
        self._db = db
        self._now = now
        self._specs = SharedSpecs()
        self._grace_s = grace_s
        # Events not handled yet (None: stop), and the future the loop waits on while there are none: a
        # list, not an asyncio queue (a task's runner adds five events at once, the loop takes them all).
        self._events: list[Event | _QueuedProgress | None] = []
        # Each task's runner progress still in `_events`, by position: a runner passes several states
        # in one go (a quick task: ACCEPTED to RUNNING), and only the last of them matters to the state
        # machine (the local DB and the report keep a task's last status anyway). An earlier one is
        # blanked out (None) when a later state follows it before the loop takes the batch, and an
        # event is made only for what is left.
        self._queued_progress: dict[str, tuple[int, _QueuedProgress]] = {}
        # One bound method for every runner to report through, not one made per runner (64 bytes each).
        self._report_progress = self._progressed
        self._arrived: asyncio.Future[None] | None = None
        self._reports: asyncio.Queue[SendReport | None] = asyncio.Queue()
        self._send: SendReportFn | None = None
        self._removals: set[asyncio.Task[None]] = set()
        self._causes = itertools.count(1)
        self._stopping = False
        self.health = HealthCheckers(
            self._health_changed,
            executor.command_context if isinstance(executor, CommandContexts) else default_context,
            executor.run_beside if isinstance(executor, RunsBeside) else None,
            executor.image_health if isinstance(executor, ImageHealth) else None,
        )
        # Whether tasks listen on this host's own ports (checked free before each start).
        self._binds_host_ports = isinstance(executor, ProcessExecutor) or getattr(
            executor, "binds_host_ports", False
        )
        # Called after each batch of instructions ran, unless it was only acknowledgements (the endpoint
        # registrar and the dependency proxy listen).
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
                updated=[self._specs.share_task(task) for task in message.updated],
                removed=message.removed,
            )
        )

    def acknowledged(self, report_id: int) -> None:
        self._put(ReportAcknowledged(cause_id=self._cause("ack"), now=self._now(), report_id=report_id))

    def _progressed(self, task_id: str, progress: Progress) -> None:
        if progress.note:
            cause = self._cause("runner-note")
            self._put(RunnerNoted(cause_id=cause, now=self._now(), task_id=task_id, message=progress.message))
            return
        if progress.state == FAILED and progress.exit_code is not None:
            directory = self._task_directory(task_id)
            line = logfiles.last_line(directory) if directory is not None else ""
            if line:
                progress = msgspec.structs.replace(progress, error=f"{progress.error}: {line}")
        now = self._now()
        queued = self._queued_progress.get(task_id)
        if queued is not None:
            index, earlier = queued
            forward = progress.state > earlier.progress.state
            if forward and index == len(self._events) - 1:
                # Nothing came after the earlier state (a runner's steps taken in one go): this one
                # takes its place, as it would take its turn.
                earlier.progress, earlier.now = progress, now
                return
            # A state that does not move forward is kept, for the state machine to refuse loudly:
            # that is a runner's bug.
            self._events[index] = None if forward else self._event(earlier)
        latest = _QueuedProgress(task_id, progress, now)
        self._queued_progress[task_id] = (len(self._events), latest)
        self._put(latest)

    def _event(self, queued: _QueuedProgress) -> RunnerProgressed:
        progress = queued.progress
        return RunnerProgressed(
            cause_id=self._cause(f"runner-{progress.state.label}"),
            now=queued.now,
            task_id=queued.task_id,
            state=progress.state,
            message=progress.message,
            error=progress.error,
            exit_code=progress.exit_code,
            health=progress.health,
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

    def _put(self, event: Event | _QueuedProgress | None) -> None:
        self._events.append(event)
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    async def _take(self) -> list[Event]:
        """Every event added so far (waits for one; empty when that was only a stop)."""
        while not self._events:
            arrived = self._arrived = asyncio.get_running_loop().create_future()
            try:
                await arrived
            finally:
                self._arrived = None
        return self._drain()

    def _drain(self) -> list[Event]:
        """The events added so far, without stops and superseded progress."""
        taken, self._events = self._events, []
        self._queued_progress.clear()
        return [
            self._event(event) if isinstance(event, _QueuedProgress) else event
            for event in taken
            if event is not None
        ]

    def _cause(self, kind: str) -> str:
        return f"{kind}#{next(self._causes)}"

    # --- the loop -------------------------------------------------------------------------------

    def _shared(self, row: StoredTask) -> StoredTask:
        """A task of the local DB, holding the copies its service's other tasks hold."""
        task = self._specs.share_task(row.task)
        return row if task is row.task else msgspec.structs.replace(row, task=task)

    async def run(self) -> None:
        """Load the local DB, then handle events until stopped. An invalid transition ends it loudly."""
        stored = [self._shared(row) for row in await self._db.load()]
        self._put(AgentStarted(cause_id=self._cause("agent-start"), now=self._now(), tasks=stored))
        reporter = asyncio.create_task(self._reporter(), name="agent-reporter")
        # The first batch (the tasks of the local DB) is handled even when a stop came first: a stop
        # without live restore must reach the tasks resumed from an earlier life too.
        started = False
        try:
            while not (self._stopping and started):
                batch = await self._take()
                if (self._stopping and started) or not batch:
                    break
                await self._execute(self.state.handle(*batch))
                started = True
                # Acknowledgements change nothing about the tasks: the listeners (which look at every
                # task) are not woken for a batch of only those.
                if self.on_change is not None and not all(isinstance(e, ReportAcknowledged) for e in batch):
                    self.on_change()
        finally:
            reporter.cancel()
            await self._detach()

    def stop(self) -> None:
        self._stopping = True
        self._put(None)

    async def _detach(self) -> None:
        # Leave the tasks running for the next agent; only removals already under way are finished.
        self.health.stop_all()
        if not self.live_restore:
            await self._stop_tasks()
        self.left_running = sum(not runner.done for runner in self.runners.values())
        for runner in self.runners.values():
            runner.cancel()
        waits = [runner.join(1.0) for runner in self.runners.values()]
        await asyncio.gather(*waits)
        if self._removals:
            await asyncio.wait(self._removals, timeout=self._grace_s)

    async def _stop_tasks(self) -> None:
        """Stop every task that runs (bounded by the longest grace) and record how they ended."""
        live = [runner for runner in self.runners.values() if not runner.done]
        for runner in live:
            runner.shutdown()
        if live:
            bound = max(runner.task.spec.stop_grace_s for runner in live) + 2 * SLACK_S
            await asyncio.wait([asyncio.ensure_future(runner.join(bound)) for runner in live])
        batch = self._drain()
        if batch:  # the runners' SHUTDOWN reports: into the local DB, for the next agent to send
            await self._write(self.state.handle(*batch))
        log.info("stopped %d tasks", len(live))

    async def _write(self, instructions: Sequence[Instruction]) -> None:
        """The local DB writes among `instructions`, in one transaction."""
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

    async def _execute(self, instructions: Sequence[Instruction]) -> None:
        await self._write(instructions)
        # Health checks follow each task's last state in the batch (a task passes several at once).
        last: dict[str, PersistTask | None] = {}
        for instruction in instructions:
            if isinstance(instruction, PersistTask):
                last[instruction.task.id] = instruction
            elif isinstance(instruction, DeleteTask):
                last[instruction.task_id] = None
        for task_id, persisted in last.items():
            if persisted is None:
                self.health.stop(task_id)
            else:
                self._follow_health(persisted.task, persisted.status.state)
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
                if instruction.finished:
                    self._keep_output(instruction.task)
                self._remove(instruction.task)
            elif isinstance(instruction, SendReport):
                self._reports.put_nowait(instruction)

    def _follow_health(self, task: Task, state: TaskState) -> None:
        """Health checks run while the task runs and it is meant to."""
        if state == RUNNING and task.desired_state <= RUNNING:
            self.health.start(task)
        else:
            self.health.stop(task.id)

    def _start(self, task: Task, state: TaskState) -> None:
        if state == RUNNING:  # resumed after an agent restart: it reports no new state
            self._follow_health(task, state)
        previous = self.runners.get(task.id)
        if previous is not None and not previous.done:
            log.warning("task %s: a runner is already running; not starting another", task.id)
            return
        runner = TaskRunner(
            task,
            state,
            self.executor,
            self._report_progress,
            grace_s=task.spec.stop_grace_s,
            check_ports=self._busy_port if self._binds_host_ports else None,
        )
        self.runners[task.id] = runner
        runner.start()

    def _busy_port(self, task: Task) -> str | None:
        """Why the task cannot start here: one of its host ports is in use (real processes only)."""
        return busy_port(task.ports.values(), self.hostname)

    def _task_directory(self, task_id: str) -> Path | None:
        """Where the executor keeps a task's output (process executor only)."""
        if not isinstance(self.executor, ProcessExecutor):
            return None
        try:
            return TaskFiles(self.executor.root, task_id).dir
        except FatalError:
            return None

    def _keep_output(self, task: Task) -> None:
        directory = self._task_directory(task.id)
        runner = self.runners.get(task.id)
        if self.kept_logs is None or directory is None or (runner is not None and not runner.done):
            return
        self.kept_logs.keep(task, directory)

    def _remove(self, task: Task) -> None:
        # A runner that never ran in this agent's life (the task ended before a restart) still gets a
        # controller to clean up with: remove() makes one.
        runner = self.runners.pop(task.id, None) or TaskRunner(
            task, SHUTDOWN, self.executor, self._report_progress, grace_s=task.spec.stop_grace_s
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
