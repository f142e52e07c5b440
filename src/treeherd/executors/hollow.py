"""The hollow executor: controllers that run nothing and only report, as kubemark's hollow nodes do.

Used by scale benchmarks (thousands of tasks on a handful of processes) and by tests. `prepare` and
`start` return at once; `wait` blocks until `shutdown` is called, then returns a clean exit (a task
that only ends that way also offers its exit as a future, `exit_future`, so that its runner holds no
coroutine while it runs). For tests and scenarios a controller can be told to fail in one step or to
exit by itself after a delay, either for every task (the executor's arguments) or per task through its
spec's environment:

    TREEHERD_HOLLOW_EXIT_AFTER_S=2     exit by itself after 2 s ...
    TREEHERD_HOLLOW_EXIT_CODE=3        ... with this code (default 0)
    TREEHERD_HOLLOW_FAIL=prepare       raise in prepare (FatalError), start or wait (RuntimeError)

Every step is idempotent, so a runner that resumes after an agent restart can repeat it.
"""

from __future__ import annotations

import asyncio
from typing import Literal, get_args

from treeherd.executors.base import Exit, FatalError
from treeherd.model.services import Task

__all__ = ["HollowController", "HollowExecutor"]

Step = Literal["prepare", "start", "wait"]
SHUTDOWN_SIGNAL = 15  # what a hollow task "died of" when shut down: SIGTERM, as a real one would

ENV_EXIT_AFTER = "TREEHERD_HOLLOW_EXIT_AFTER_S"
ENV_EXIT_CODE = "TREEHERD_HOLLOW_EXIT_CODE"
ENV_FAIL = "TREEHERD_HOLLOW_FAIL"


class HollowController:
    """One task that does nothing. Records what was called, for tests."""

    # One per task, tens of thousands in a benchmark's process: no per-instance dict.
    __slots__ = (
        "_down",
        "_waiters",
        "calls",
        "exit_after_s",
        "exit_code",
        "fail_in",
        "prepared",
        "removed",
        "shutdown_exit_code",
        "started",
        "task",
    )

    def __init__(
        self,
        task: Task,
        *,
        exit_after_s: float | None = None,
        exit_code: int = 0,
        fail_in: Step | None = None,
        shutdown_exit_code: int | None = 0,
    ) -> None:
        self.task = task
        self.exit_after_s = exit_after_s
        self.exit_code = exit_code
        self.fail_in = fail_in
        # 0: a shut-down hollow task exits cleanly; None: it reports the SIGTERM it "received".
        self.shutdown_exit_code = shutdown_exit_code
        self.calls: list[str] = []
        self.prepared = False
        self.started = False
        self.removed = False
        # Shut down (or removed), and the futures of the `wait` calls under way and of `exit_future`: a
        # plain flag, not an asyncio event per task (thousands of them in a benchmark's process).
        self._down = False
        self._waiters: list[asyncio.Future[Exit]] | None = None  # made by the first wait

    async def prepare(self) -> None:
        self.prepare_at_once()

    def prepare_at_once(self) -> None:
        self.calls.append("prepare")
        if self.fail_in == "prepare":
            raise FatalError(f"hollow task {self.task.id} told to fail in prepare")
        self.prepared = True

    async def start(self) -> None:
        self.start_at_once()

    def start_at_once(self) -> None:
        self.calls.append("start")
        if self.fail_in == "start":
            raise RuntimeError(f"hollow task {self.task.id} told to fail in start")
        self.started = True

    async def wait(self) -> Exit:
        self.calls.append("wait")
        if self.fail_in == "wait":
            raise RuntimeError(f"hollow task {self.task.id} told to fail in wait")
        woken = self._exit()
        try:
            if self.exit_after_s is None:
                return await woken
            async with asyncio.timeout(self.exit_after_s):
                return await woken
        except TimeoutError:
            return Exit(code=self.exit_code, message=f"exited by itself after {self.exit_after_s:g}s")
        finally:
            if self._waiters is not None and woken in self._waiters:
                self._waiters.remove(woken)

    def exit_future(self) -> asyncio.Future[Exit] | None:
        """The exit as a future (`ExitFuture`), for a task that only ends when shut down; None when it
        is told to exit by itself or to fail in `wait` (`wait` does that)."""
        if self.exit_after_s is not None or self.fail_in == "wait":
            return None
        self.calls.append("wait")
        return self._exit()

    async def shutdown(self, grace_s: float) -> None:
        self.calls.append("shutdown")
        self._wake()

    async def remove(self) -> None:
        self.calls.append("remove")
        self._wake()
        self.removed = True

    def _exit(self) -> asyncio.Future[Exit]:
        """A future of the shutdown's exit: resolved already when the task is down, else by `_wake`."""
        future: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        if self._down:
            future.set_result(self._shutdown_exit())
        elif self._waiters is None:
            self._waiters = [future]
        else:
            self._waiters.append(future)
        return future

    def _shutdown_exit(self) -> Exit:
        if self.shutdown_exit_code is None:
            return Exit(signal=SHUTDOWN_SIGNAL, message="shutdown")
        return Exit(code=self.shutdown_exit_code, message="shutdown")

    def _wake(self) -> None:
        self._down = True
        waiters, self._waiters = self._waiters or [], None
        for woken in waiters:
            if not woken.done():
                woken.set_result(self._shutdown_exit())


class HollowExecutor:
    """Makes hollow controllers; keeps the latest controller per task id so tests can look inside."""

    name = "hollow"

    def __init__(
        self,
        *,
        exit_after_s: float | None = None,
        exit_code: int = 0,
        fail_in: Step | None = None,
        shutdown_exit_code: int | None = 0,
    ) -> None:
        self.exit_after_s = exit_after_s
        self.exit_code = exit_code
        self.fail_in = fail_in
        self.shutdown_exit_code = shutdown_exit_code
        self.controllers: dict[str, HollowController] = {}

    def controller(self, task: Task) -> HollowController:
        env = task.spec.env
        exit_after = env.get(ENV_EXIT_AFTER)
        fail = env.get(ENV_FAIL)
        if fail is not None and fail not in get_args(Step):
            raise FatalError(f"{ENV_FAIL}={fail!r}: expected one of {', '.join(get_args(Step))}")
        try:
            exit_after_s = float(exit_after) if exit_after is not None else self.exit_after_s
            exit_code = int(env.get(ENV_EXIT_CODE, self.exit_code))
        except ValueError as error:
            raise FatalError(f"bad hollow setting in the task's environment: {error}") from None
        controller = self.make_controller(
            task,
            exit_after_s=exit_after_s,
            exit_code=exit_code,
            fail_in=fail if fail is not None else self.fail_in,  # type: ignore[arg-type]
            shutdown_exit_code=self.shutdown_exit_code,
        )
        self.controllers[task.id] = controller
        return controller

    def make_controller(
        self,
        task: Task,
        *,
        exit_after_s: float | None,
        exit_code: int,
        fail_in: Step | None,
        shutdown_exit_code: int | None,
    ) -> HollowController:
        """The controller for a task and its settings (a subclass may make its own kind)."""
        return HollowController(
            task,
            exit_after_s=exit_after_s,
            exit_code=exit_code,
            fail_in=fail_in,
            shutdown_exit_code=shutdown_exit_code,
        )
