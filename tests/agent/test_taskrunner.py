"""Task runners: the steps of a controller, the states they report, shutdown, resume and clean-up."""

from __future__ import annotations

import asyncio

import pytest
from agent_helpers import OneController, ScriptedController, eventually, make_task

from treeherd.agent.progress import Progress
from treeherd.agent.taskrunner import TaskRunner
from treeherd.executors.base import Executor, Exit, FatalError
from treeherd.executors.hollow import HollowExecutor, Step
from treeherd.model.services import Task
from treeherd.model.states import TaskState as S

UP = [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING]


class Recorder:
    def __init__(self) -> None:
        self.progress: list[Progress] = []

    def __call__(self, task_id: str, progress: Progress) -> None:
        assert task_id == "t1"
        self.progress.append(progress)

    @property
    def states(self) -> list[S]:
        return [p.state for p in self.progress]

    @property
    def last(self) -> Progress:
        return self.progress[-1]


async def run_to_end(
    executor: Executor, *, task: Task | None = None, state: S = S.ASSIGNED, **kwargs: float
) -> Recorder:
    recorder = Recorder()
    runner = TaskRunner(task or make_task("t1"), state, executor, recorder, **kwargs)
    async with asyncio.timeout(3):
        await runner.run()
    return recorder


def started(
    executor: Executor, *, task: Task | None = None, state: S = S.ASSIGNED, **kwargs: float
) -> tuple[TaskRunner, Recorder]:
    recorder = Recorder()
    runner = TaskRunner(task or make_task("t1"), state, executor, recorder, **kwargs)
    runner.start()
    return runner, recorder


async def test_a_hollow_task_runs_until_shut_down() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor)
    await eventually(lambda: recorder.states == UP, "RUNNING")
    # The hollow controller hands over its exit as a future: a running task holds no asyncio task.
    assert not asyncio.all_tasks() - {asyncio.current_task()}
    assert not runner.done
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [*UP, S.SHUTDOWN]
    assert recorder.last.exit_code == 0
    # The shutdown learns how the task ended from the same future: no second wait.
    assert executor.controllers["t1"].calls == ["prepare", "start", "wait", "shutdown"]
    assert not asyncio.all_tasks() - {asyncio.current_task()}  # nothing of the runner left running


async def test_a_controller_whose_steps_never_wait_is_running_when_start_returns() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor)
    # Taken in the call: no asyncio task was made for the steps, and none holds the running task.
    assert recorder.states == UP
    assert not asyncio.all_tasks() - {asyncio.current_task()}
    assert not runner.done
    assert executor.controllers["t1"].calls == ["prepare", "start", "wait"]


@pytest.mark.parametrize(
    ("fail_in", "states", "error"),
    [
        ("prepare", [S.ACCEPTED, S.PREPARING, S.REJECTED], "hollow task t1 told to fail in prepare"),
        ("start", [*UP[:4], S.FAILED], "start failed: hollow task t1 told to fail in start"),
    ],
)
async def test_steps_taken_at_once_fail_as_awaited_ones_do(
    fail_in: Step, states: list[S], error: str
) -> None:
    runner, recorder = started(HollowExecutor(fail_in=fail_in))
    assert recorder.states == states
    assert recorder.last.error == error
    assert runner.done and not asyncio.all_tasks() - {asyncio.current_task()}
    # The same task through the awaited steps: the same reports.
    awaited = await run_to_end(HollowExecutor(fail_in=fail_in))
    assert awaited.progress == recorder.progress


async def test_steps_taken_at_once_hand_a_wait_to_an_asyncio_task() -> None:
    # No exit future for a task that exits by itself: its wait is awaited in the runner's asyncio task.
    runner, recorder = started(HollowExecutor(exit_after_s=0.05))
    assert recorder.states == UP
    assert len(asyncio.all_tasks() - {asyncio.current_task()}) == 1
    assert await runner.join(2)
    assert recorder.states == [*UP, S.COMPLETE]


async def test_a_task_without_an_exit_future_is_waited_on_in_its_one_asyncio_task() -> None:
    controller = ScriptedController()  # waits until shut down
    runner, recorder = started(OneController(controller))
    await eventually(lambda: recorder.states == UP, "RUNNING")
    assert len(asyncio.all_tasks() - {asyncio.current_task()}) == 1
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [*UP, S.SHUTDOWN]
    # The wait under way is interrupted; a second one, through the shutdown, learns how it ended.
    assert controller.calls == ["prepare", "start", "wait", "shutdown", "wait"]
    assert not asyncio.all_tasks() - {asyncio.current_task()}


class FutureExit(ScriptedController):
    """A controller that hands over its exit as a future the test resolves."""

    def __init__(self) -> None:
        super().__init__()
        self.exit_watched: asyncio.Future[Exit] | None = None

    def exit_future(self) -> asyncio.Future[Exit]:
        self.calls.append("exit_future")
        self.exit_watched = asyncio.get_running_loop().create_future()
        return self.exit_watched


async def running_on_a_future() -> tuple[TaskRunner, Recorder, asyncio.Future[Exit]]:
    controller = FutureExit()
    runner, recorder = started(OneController(controller), grace_s=0.05, slack_s=0.05)
    await eventually(lambda: recorder.states == UP, "RUNNING")
    assert controller.exit_watched is not None and not runner.done
    return runner, recorder, controller.exit_watched


@pytest.mark.parametrize(
    ("ending", "state", "error"),
    [
        (Exit(code=0, message="done"), S.COMPLETE, ""),
        (Exit(code=3), S.FAILED, "exit code 3"),
        (Exit(signal=9), S.FAILED, "killed by signal 9"),
        (RuntimeError("engine gone"), S.FAILED, "wait failed: engine gone"),
        (None, S.FAILED, "wait failed: its exit was cancelled"),
    ],
)
async def test_a_task_on_an_exit_future_reports_how_it_ended(
    ending: Exit | Exception | None, state: S, error: str
) -> None:
    runner, recorder, future = await running_on_a_future()
    if isinstance(ending, Exit):
        future.set_result(ending)
    elif isinstance(ending, Exception):
        future.set_exception(ending)
    else:
        future.cancel()
    assert await runner.join(2)
    assert recorder.states == [*UP, state]
    assert recorder.last.error == error


async def test_a_task_on_an_exit_future_that_fails_its_health_is_stopped_and_failed() -> None:
    runner, recorder, future = await running_on_a_future()
    runner.fail("unhealthy: no answer")
    assert not runner.done  # stopping: waits for the exit, bounded by the slack
    future.set_result(Exit(code=143))
    assert await runner.join(2)
    assert recorder.states == [*UP, S.FAILED]
    assert (recorder.last.error, recorder.last.exit_code) == ("unhealthy: no answer", 143)


async def test_cancelling_a_runner_on_an_exit_future_leaves_the_task_and_its_end_alone() -> None:
    runner, recorder, future = await running_on_a_future()
    runner.cancel()
    assert runner.done and await runner.join(1)
    future.set_result(Exit(code=0))
    await asyncio.sleep(0)
    assert recorder.states == UP  # the agent let go: the end is for the next agent to learn


@pytest.mark.parametrize(
    ("code", "state", "error"),
    [(0, S.COMPLETE, ""), (3, S.FAILED, "exit code 3: exited by itself after 0.01s")],
)
async def test_a_task_that_exits_by_itself(code: int, state: S, error: str) -> None:
    recorder = await run_to_end(HollowExecutor(exit_after_s=0.01, exit_code=code))
    assert recorder.states == [*UP, state]
    assert recorder.last.exit_code == code
    assert recorder.last.error == error


@pytest.mark.parametrize(
    ("raise_in", "exception", "states"),
    [
        ("prepare", FatalError("no such binary"), [S.ACCEPTED, S.PREPARING, S.REJECTED]),
        ("prepare", RuntimeError("disk full"), [S.ACCEPTED, S.PREPARING, S.FAILED]),
        ("start", RuntimeError("fork failed"), [S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.FAILED]),
        ("start", FatalError("fatal only counts in prepare"), [*UP[:4], S.FAILED]),
        ("wait", RuntimeError("lost track"), [*UP, S.FAILED]),
    ],
)
async def test_controller_errors_end_the_task(raise_in: str, exception: Exception, states: list[S]) -> None:
    controller = ScriptedController(raise_in={raise_in: exception})
    recorder = await run_to_end(OneController(controller))
    assert recorder.states == states
    assert str(exception) in recorder.last.error


async def test_an_exit_by_signal_fails_the_task() -> None:
    recorder = await run_to_end(OneController(ScriptedController(exit=Exit(signal=9, message="oom-killed"))))
    assert recorder.last.state == S.FAILED
    assert recorder.last.error == "killed by signal 9: oom-killed"


async def test_an_executor_that_cannot_make_a_controller_rejects_the_task() -> None:
    task = make_task("t1", env={"TREEHERD_HOLLOW_FAIL": "everywhere"})
    recorder = await run_to_end(HollowExecutor(), task=task)
    assert recorder.states == [S.REJECTED]
    assert "TREEHERD_HOLLOW_FAIL" in recorder.last.error


async def test_a_task_known_running_resumes_at_wait() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor, state=S.RUNNING)
    await eventually(lambda: executor.controllers.get("t1") and executor.controllers["t1"].calls == ["wait"])
    assert recorder.states == []  # the state it resumed in is not reported again
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [S.SHUTDOWN]


async def test_a_task_resumed_while_preparing_prepares_again() -> None:
    executor = HollowExecutor(exit_after_s=0)
    recorder = await run_to_end(executor, state=S.PREPARING)
    assert recorder.states == [S.READY, S.STARTING, S.RUNNING, S.COMPLETE]
    assert executor.controllers["t1"].calls == ["prepare", "start", "wait"]


async def test_desired_ready_holds_at_ready_until_told_to_proceed() -> None:
    runner, recorder = started(HollowExecutor(exit_after_s=0), task=make_task("t1", desired=S.READY))
    await eventually(lambda: recorder.states == UP[:3], "READY")
    await asyncio.sleep(0.02)
    assert recorder.states == UP[:3]
    runner.proceed()
    assert await runner.join(2)
    assert recorder.states == [*UP, S.COMPLETE]


async def test_shutdown_during_a_slow_step_cancels_it() -> None:
    controller = ScriptedController(hang_in={"prepare"})
    runner, recorder = started(OneController(controller), slack_s=0.1)
    await eventually(lambda: controller.calls == ["prepare"])
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [S.ACCEPTED, S.PREPARING, S.SHUTDOWN]
    assert controller.calls == ["prepare", "shutdown"]


async def test_a_shutdown_that_hangs_fails_the_task_in_bounded_time() -> None:
    controller = ScriptedController(hang_in={"shutdown"})
    runner, recorder = started(OneController(controller), grace_s=0.05, slack_s=0.05)
    await eventually(lambda: recorder.states == UP)
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.last.state == S.FAILED
    assert recorder.last.error == "shutdown failed: did not stop in time"


async def test_remove_stops_the_task_then_cleans_up() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor)
    await eventually(lambda: recorder.states == UP)
    async with asyncio.timeout(2):
        await runner.remove()
    assert recorder.last.state == S.SHUTDOWN
    assert executor.controllers["t1"].calls[-3:] == ["wait", "shutdown", "remove"]
    assert executor.controllers["t1"].removed


async def test_remove_without_a_runner_makes_a_controller_to_clean_up() -> None:
    executor = HollowExecutor()
    runner = TaskRunner(make_task("t1"), S.COMPLETE, executor, Recorder())
    async with asyncio.timeout(2):
        await runner.remove()
    assert executor.controllers["t1"].calls == ["remove"]


async def test_cancelling_a_runner_leaves_the_task_alone() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor)
    await eventually(lambda: recorder.states == UP)
    runner.cancel()
    assert await runner.join(1)
    assert recorder.states == UP
    assert "shutdown" not in executor.controllers["t1"].calls


async def test_shutdown_while_held_at_ready_shuts_down_without_starting() -> None:
    executor = HollowExecutor()
    runner, recorder = started(executor, task=make_task("t1", desired=S.READY))
    await eventually(lambda: recorder.states == UP[:3], "READY")
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [*UP[:3], S.SHUTDOWN]
    assert "start" not in executor.controllers["t1"].calls


async def test_cancelling_during_a_step_leaves_the_task_alone_even_after_a_shutdown() -> None:
    # The agent detaching cancels the runner; a shutdown asked for at the same moment must not
    # turn that cancellation into a shutdown of the task.
    controller = ScriptedController(hang_in={"prepare"})
    runner, recorder = started(OneController(controller), slack_s=0.1)
    await eventually(lambda: controller.calls == ["prepare"])
    runner.shutdown()
    runner.cancel()
    assert await runner.join(2)
    assert recorder.states == [S.ACCEPTED, S.PREPARING]
    assert controller.calls == ["prepare"]


async def test_a_step_that_swallows_the_shutdown_still_stops_the_task() -> None:
    class Stubborn(ScriptedController):
        async def prepare(self) -> None:
            self.calls.append("prepare")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass  # a controller that does not let itself be interrupted

    controller = Stubborn()
    runner, recorder = started(OneController(controller), slack_s=0.1)
    await eventually(lambda: controller.calls == ["prepare"])
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.states == [S.ACCEPTED, S.PREPARING, S.SHUTDOWN]
    assert controller.calls == ["prepare", "shutdown"]


async def test_running_is_reported_with_the_health_the_controller_starts_with() -> None:
    class Checked(ScriptedController):
        start_health = "starting"  # its image has a health check of its own

    controller = Checked()
    runner, recorder = started(OneController(controller))
    await eventually(lambda: recorder.states == UP, "RUNNING")
    assert [p.health for p in recorder.progress] == ["", "", "", "", "starting"]
    runner.shutdown()
    assert await runner.join(2)
    assert recorder.last.health == ""
    # A controller that says nothing of health (the process executor's): RUNNING without one.
    plain = ScriptedController()
    runner, recorder = started(OneController(plain))
    await eventually(lambda: recorder.states == UP, "RUNNING")
    assert recorder.last.health == ""
    runner.shutdown()
    assert await runner.join(2)
