"""One task runner per task: steps its executor's controller and reports every state it reaches.

The steps follow SwarmKit's `exec.Do`: get a controller (ACCEPTED), PREPARING, `prepare` (READY),
STARTING, `start` (RUNNING, with the health a controller knows its task starts with), `wait`, then a
terminal state: COMPLETE on exit code 0, FAILED on any other exit or error, REJECTED when the executor
says the task can never run (`FatalError` while making the controller or in `prepare`), SHUTDOWN when
told to stop. A runner starts from the state the
agent knows (after a restart a RUNNING task resumes at `wait`): the controller's steps are idempotent,
so repeating the step it was in is safe. It reports only states it moves to, never the one it resumed in.
A task whose desired state is READY (a restart waiting out its delay) is prepared, then held at READY
until `proceed()`. Before STARTING, `check_ports` (if given) may reject the task: a host port it needs
is in use.

A controller that hands over its task's exit as a future (`ExitFuture`, the hollow one does) is not
waited on in a coroutine: the runner's asyncio task ends at RUNNING and a callback on the future reports
how the task ended; a shutdown then starts an asyncio task of its own. An agent holding tens of
thousands of running tasks keeps no coroutines for them (about 1.5 kB each). A controller whose
prepare and start never wait (`StepsAtOnce`, the hollow one again) is stepped to RUNNING in the call
that starts the runner, without an asyncio task at all.

Every wait on the controller outside `wait` itself is bounded; cancelling the runner (the agent stops)
leaves the task alone, as an agent restart must, so it can be resumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from treeherd.agent.progress import Progress, Report, describe_exit, started_message
from treeherd.executors.base import (
    Controller,
    Executor,
    Exit,
    ExitFuture,
    FatalError,
    Notes,
    StepsAtOnce,
)
from treeherd.model.discovery import Health
from treeherd.model.services import Task
from treeherd.model.states import (
    ACCEPTED,
    COMPLETE,
    FAILED,
    PREPARING,
    READY,
    REJECTED,
    RUNNING,
    SHUTDOWN,
    STARTING,
    TaskState,
)

__all__ = ["TaskRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long past the grace period a controller may take to stop or clean up before we give up on it.
SLACK_S = 5.0


class _Stopped(Exception):
    """Shutdown was asked for while a step was under way (the step was cancelled)."""


class TaskRunner:
    """`start()` launches the steps as an asyncio task; `proceed()` lets a task held at READY start;
    `shutdown()` asks for SHUTDOWN; `remove()` stops it if needed and cleans up; `cancel()` detaches
    without touching the task."""

    # An agent holds one runner per task it runs (tens of thousands in a benchmark's process): no
    # per-instance dict.
    __slots__ = (
        "_check_ports",
        "_executor",
        "_exit_watch",
        "_failure",
        "_grace_s",
        "_in_step",
        "_interrupted",
        "_may_proceed",
        "_proceeding",
        "_report_to",
        "_running_in",
        "_slack_s",
        "_stopping",
        "_task",
        "controller",
        "state",
        "task",
    )

    def __init__(
        self,
        task: Task,
        state: TaskState,
        executor: Executor,
        report: Report,
        *,
        grace_s: float = 10.0,
        slack_s: float = SLACK_S,
        check_ports: Callable[[Task], str | None] | None = None,
    ) -> None:
        self.task = task
        self._check_ports = check_ports
        self.state = state
        self.controller: Controller | None = None
        self._executor = executor
        self._report_to = report
        self._grace_s = grace_s
        self._slack_s = slack_s
        # Plain flags, not asyncio events: a runner is made per task, and only a task held at READY waits
        # to proceed (`_proceeding`, made then).
        self._stopping = False
        self._may_proceed = task.desired_state >= RUNNING
        self._proceeding: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: str | None = None
        # The asyncio task running the steps (noted once: `current_task` is not free), whether it is
        # inside a step `shutdown` may interrupt (by cancelling it), and whether it did (`_interrupted`
        # tells that cancellation from the agent's own).
        self._running_in: asyncio.Task[object] | None = None
        self._in_step = False
        self._interrupted = False
        # A running task whose controller handed over its exit as a future (`ExitFuture`): the runner's
        # asyncio task has ended and only this future, with `_exited` as its callback, waits for it.
        self._exit_watch: asyncio.Future[Exit] | None = None

    # --- control --------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._run_at_once():
            self._task = asyncio.create_task(self.run(), name=f"task-runner-{self.task.id}")

    def shutdown(self) -> None:
        self._stopping = True
        watch = self._unwatch()
        if watch is not None and self.controller is not None:
            # Running without an asyncio task: one now, for the shutdown, that learns the exit from
            # the same future.
            self._task = asyncio.create_task(
                self._stop_watched(self.controller, watch), name=f"task-runner-{self.task.id}"
            )
            return
        running = self._running_in
        if (
            self._in_step
            and running is not None
            and not self._interrupted
            and running is not asyncio.current_task()
        ):
            self._interrupted = True
            running.cancel()

    def fail(self, reason: str) -> None:
        """Stop the task as `shutdown` does, but report it FAILED with `reason` (an unhealthy task)."""
        self._failure = reason
        self.shutdown()

    def proceed(self) -> None:
        """The desired state became RUNNING: go on past READY."""
        self._may_proceed = True
        if self._proceeding is not None:
            self._proceeding.set()

    @property
    def done(self) -> bool:
        if self._exit_watch is not None:
            return False
        return self._task is None or self._task.done()

    def cancel(self) -> None:
        self._unwatch()  # the task is left alone, as by cancelling a `wait`
        if self._task is not None:
            self._task.cancel()

    async def join(self, timeout_s: float) -> bool:
        """Wait (bounded) for the steps to end; True if they did."""
        waiting = self._exit_watch if self._exit_watch is not None else self._task
        if waiting is None:
            return True
        await asyncio.wait({waiting}, timeout=timeout_s)
        return self.done

    async def remove(self) -> None:
        """Stop the task if it still runs, then let the executor clean up what prepare made."""
        self.shutdown()
        if not await self.join(self._grace_s + 2 * self._slack_s):
            log.warning("task %s: runner did not stop in time; cancelling it", self.task.id)
            self.cancel()
            await self.join(self._slack_s)
        controller = self.controller
        if controller is None:
            try:
                controller = self._executor.controller(self.task)
            except Exception as error:  # nothing it could have made, so nothing to clean up
                log.info("task %s: no controller to clean up with: %s", self.task.id, error)
                return
        try:
            async with asyncio.timeout(self._grace_s + self._slack_s):
                await controller.remove()
        except Exception:
            log.exception("task %s: removing failed", self.task.id)

    # --- the steps ------------------------------------------------------------------------------

    async def run(self) -> None:
        # One coroutine from here down to the controller's step: a running task's runner is held for
        # as long as the task runs, thousands of them in one agent.
        self._running_in = asyncio.current_task()
        try:
            if self.state.terminal:
                return
            # Made already when `_run_at_once` handed over to this asyncio task.
            controller = self.controller if self.controller is not None else self._make_controller()
            if controller is None:
                return
            try:
                while not self.state.terminal:
                    if self._stopping:
                        raise _Stopped
                    if self.state != RUNNING:
                        if not self._step_at_once():
                            await self._step(controller)
                    elif self._watch_exit(controller):
                        return  # the exit future's callback takes it from here
                    else:
                        await self._wait(controller)
            except _Stopped:
                await self._shut_down(controller, None)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._runner_failed(error)

    async def _stop_watched(self, controller: Controller, watch: asyncio.Future[Exit]) -> None:
        """The shutdown of a task that ran on its exit future, in an asyncio task of its own."""
        try:
            await self._shut_down(controller, watch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._runner_failed(error)

    def _runner_failed(self, error: Exception) -> None:
        # A controller misbehaving outside its steps' contracts, or a bug here: the task failed.
        log.exception("task %s: runner failed", self.task.id)
        if not self.state.terminal:
            self._report(FAILED, error=f"task runner failed: {error!r}")

    def _make_controller(self) -> Controller | None:
        """The task's controller (None: the task was reported REJECTED or FAILED for want of one)."""
        try:
            controller = self.controller = self._executor.controller(self.task)
            if hasattr(controller, "on_note"):  # a Notes controller (see `progress.started_message`)
                cast(Notes, controller).on_note = self._noted
        except FatalError as error:
            self._report(REJECTED, error=str(error))
            return None
        except Exception as error:
            self._report(FAILED, error=f"no controller: {error}")
            return None
        return controller

    def _run_at_once(self) -> bool:
        """Take the task's steps in this call, for a controller whose steps never wait (`StepsAtOnce`):
        True when nothing is left for an asyncio task to do (the task ended, or runs with its exit on a
        future), False when `run` must go on from the state reached (a step that waits: held at READY,
        a `wait` to await, a shutdown asked for)."""
        try:
            if self.state.terminal:
                return True
            controller = self._make_controller()
            if controller is None:
                return True
            if not hasattr(controller, "prepare_at_once"):  # what isinstance of StepsAtOnce checks
                return False
            while not self.state.terminal:
                if self._stopping:
                    return False
                if self.state != RUNNING:
                    if not self._step_at_once() and not self._step_now(controller):
                        return False
                else:
                    return self._watch_exit(controller)
        except Exception as error:
            self._runner_failed(error)
        return True

    def _step_now(self, controller: Controller) -> bool:
        """Prepare or start through the controller's steps that do not wait; False at any other state."""
        state = self.state
        if state == PREPARING:
            try:
                cast(StepsAtOnce, controller).prepare_at_once()
            except Exception as error:
                self._after_prepare(error)
            else:
                self._after_prepare(None)
        elif state == STARTING:
            try:
                cast(StepsAtOnce, controller).start_at_once()
            except Exception as error:
                self._after_start(controller, error)
            else:
                self._after_start(controller, None)
        else:
            return False
        return True

    def _after_prepare(self, error: Exception | None) -> None:
        """The report of a prepare step that ended (`error`: how it failed)."""
        if error is None:
            self._report(READY)
        elif isinstance(error, FatalError):
            self._report(REJECTED, error=str(error))
        else:
            self._report(FAILED, error=f"prepare failed: {error}")

    def _after_start(self, controller: Controller, error: Exception | None) -> None:
        """The report of a start step that ended (`error`: how it failed)."""
        if error is not None:
            self._report(FAILED, error=f"start failed: {error}")
            return
        # What isinstance of the StartsWithHealth protocol checks, at a fraction of its cost.
        health: Health = getattr(controller, "start_health", "")
        self._report(RUNNING, message=started_message(controller), health=health)

    def _step_at_once(self) -> bool:
        """Take the next step if it waits for nothing (it only reports a state); False if it may wait.

        Half of a task's steps are only reports: taken here, they need no coroutine of their own."""
        state = self.state
        if state < ACCEPTED:
            self._report(ACCEPTED)
        elif state == ACCEPTED:
            self._report(PREPARING)
        elif state == READY and self._may_proceed:
            self._report_start()
        else:
            return False
        return True

    def _report_start(self) -> None:
        """Past READY: STARTING, unless a host port the task needs is in use."""
        busy = self._check_ports(self.task) if self._check_ports and self.task.ports else None
        if busy:
            self._report(REJECTED, error=busy)
        else:
            self._report(STARTING)

    async def _step(self, controller: Controller) -> None:
        """A step that may wait: on the controller, or (held at READY) for `proceed()`."""
        state = self.state
        if state == PREPARING:
            try:
                await self._unless_stopped(controller.prepare)
            except _Stopped:
                raise
            except Exception as error:
                self._after_prepare(error)
            else:
                self._after_prepare(None)
        elif state == READY:
            if not self._may_proceed:
                self._proceeding = asyncio.Event()
                await self._unless_stopped(self._proceeding.wait)
            self._report_start()
        elif state == STARTING:
            try:
                await self._unless_stopped(controller.start)
            except _Stopped:
                raise
            except Exception as error:
                self._after_start(controller, error)
            else:
                self._after_start(controller, None)

    async def _unless_stopped(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run one step; if shutdown is asked for meanwhile, cancel it (steps are idempotent).

        The step runs in the runner's own asyncio task, which `shutdown` cancels: no extra task or
        wait per step, which is most of an agent's CPU when it starts thousands of quick tasks."""
        if self._stopping:
            raise _Stopped
        current = self._running_in
        self._in_step = True
        try:
            result = await step()
        except asyncio.CancelledError:
            # Ours only if no one else (the agent detaching) cancelled the task as well.
            if self._interrupted and current is not None and current.uncancel() == 0:
                raise _Stopped from None
            raise
        else:
            if self._interrupted and current is not None:
                current.uncancel()  # the step swallowed our cancellation: stop all the same
                raise _Stopped
            return result
        finally:
            self._in_step = False
            self._interrupted = False

    async def _wait(self, controller: Controller) -> None:
        # `wait` runs in the runner's own asyncio task, which `shutdown` interrupts as it does any step:
        # a running task holds no second asyncio task (with its future, context and callback, about
        # 0.7 kB per task, in agents that hold tens of thousands). Controllers' `wait` may be
        # cancelled and called again.
        try:
            exit = await self._unless_stopped(controller.wait)
        except _Stopped:
            # Stopping it: a wait of its own now, through the shutdown, to learn how it ended.
            await self._shut_down(controller, asyncio.ensure_future(controller.wait()))
            return
        except Exception as error:
            self._report(FAILED, error=f"wait failed: {error}")
            return
        self._ended(exit)

    def _watch_exit(self, controller: Controller) -> bool:
        """Hand the wait for the exit to a callback on the controller's exit future, if it offers one:
        the runner's asyncio task (and its coroutines, about 1.5 kB a task) can then end."""
        future = cast(ExitFuture, controller).exit_future() if hasattr(controller, "exit_future") else None
        if future is None:
            return False
        self._exit_watch = future
        future.add_done_callback(self._exited)
        self._task = self._running_in = None  # nothing runs until it ends or is shut down
        return True

    def _unwatch(self) -> asyncio.Future[Exit] | None:
        """Stop waiting on the exit future, if the runner does: its callback taken off, the future
        returned."""
        watch, self._exit_watch = self._exit_watch, None
        if watch is not None:
            watch.remove_done_callback(self._exited)
        return watch

    def _exited(self, future: asyncio.Future[Exit]) -> None:
        if future is not self._exit_watch:
            return
        self._exit_watch = None
        if future.cancelled():
            self._report(FAILED, error="wait failed: its exit was cancelled")
        elif (error := future.exception()) is not None:
            self._report(FAILED, error=f"wait failed: {error}")
        else:
            self._ended(future.result())

    def _ended(self, exit: Exit) -> None:
        if exit.success:
            self._report(COMPLETE, message=exit.message or "finished", exit_code=exit.code)
        else:
            why = describe_exit(exit) + (f": {exit.message}" if exit.message else "")
            self._report(FAILED, error=why, exit_code=exit.code)

    async def _shut_down(self, controller: Controller, waiter: asyncio.Future[Exit] | None) -> None:
        try:
            async with asyncio.timeout(self._grace_s + self._slack_s):
                await controller.shutdown(self._grace_s)
        except Exception as error:
            if waiter is not None:
                waiter.cancel()
            reason = "did not stop in time" if isinstance(error, TimeoutError) else str(error)
            self._report(FAILED, error=f"shutdown failed: {reason}")
            return
        exit: Exit | None = None
        if waiter is not None:
            # wait() returns once the task is down; a controller that never returns is not waited for.
            done, _ = await asyncio.wait({waiter}, timeout=self._slack_s)
            if done and not waiter.cancelled() and waiter.exception() is None:
                exit = waiter.result()
            else:
                waiter.cancel()
        if self._failure is not None:
            self._report(FAILED, error=self._failure, exit_code=None if exit is None else exit.code)
            return
        self._report(
            SHUTDOWN,
            message="shut down" if exit is None else f"shut down ({describe_exit(exit)})",
            exit_code=None if exit is None else exit.code,
        )

    def _noted(self, message: str) -> None:
        if self.state == RUNNING:
            self._report_to(self.task.id, Progress(state=self.state, message=message, note=True))

    def _report(
        self,
        state: TaskState,
        *,
        message: str = "",
        error: str = "",
        exit_code: int | None = None,
        health: Health = "",
    ) -> None:
        self.state = state
        progress = Progress(state=state, message=message, error=error, exit_code=exit_code, health=health)
        self._report_to(self.task.id, progress)
