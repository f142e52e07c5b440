"""The executor protocol: one controller per task, stepped by the agent's task runner.

`prepare` (fetch, check, create: a `FatalError` here means the task can never run → REJECTED),
`start`, `wait` (until the task ends: its exit), `shutdown` (stop it, within a grace period), `remove`
(clean up what prepare made). Each step is idempotent, so a runner that resumes after an agent restart
can repeat the step it was in. A step may be cancelled where it waits (the runner interrupts the one
under way to shut the task down), and `wait` called again after that: the runner waits on a running
task in its own asyncio task, and starts a new `wait` beside `shutdown` to learn how the task ended.
Extra abilities (logs) are separate small protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

from treeherd.model.discovery import Health
from treeherd.model.objects import LimitSupport
from treeherd.model.services import Task


class FatalError(Exception):
    """The task can never run as specified (missing binary, bad working directory...)."""


class Exit(msgspec.Struct, frozen=True, kw_only=True):
    """How a task ended: exit code, or the signal that ended it, and a message."""

    code: int | None = None
    signal: int | None = None
    message: str = ""
    out_of_memory: bool = False

    @property
    def success(self) -> bool:
        return self.code == 0 and self.signal is None


class Controller(Protocol):
    async def prepare(self) -> None: ...

    async def start(self) -> None: ...

    async def wait(self) -> Exit: ...

    async def shutdown(self, grace_s: float) -> None: ...

    async def remove(self) -> None: ...


class LogSource(Protocol):
    def logs(self, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]: ...


class TaskLogs(Protocol):
    """An executor that keeps its tasks' output: the last `tail` lines (None: all it kept), then with
    `follow` new output until the task ends. Raises `LookupError` for a task it knows nothing of."""

    def logs(self, task_id: str, *, follow: bool, tail: int | None) -> AsyncIterator[bytes]: ...


class Executor(Protocol):
    """Makes a controller for a task; `name` appears in node descriptions."""

    name: str

    def controller(self, task: Task) -> Controller: ...


@runtime_checkable
class EnforcesLimits(Protocol):
    """An executor that enforces tasks' resource limits: how, on this host (for the node description)."""

    def limit_support(self) -> LimitSupport: ...


class CommandContext(msgspec.Struct, frozen=True, kw_only=True):
    """How to run a command beside a task (a health check): the task's environment and directory."""

    env: dict[str, str]
    cwd: str | None = None


@runtime_checkable
class CommandContexts(Protocol):
    """An executor that can say how a command beside one of its tasks is run."""

    def command_context(self, task: Task) -> CommandContext: ...


@runtime_checkable
class RunsBeside(Protocol):
    """An executor that runs a command beside a task itself (in its container, for a health check):
    the command's exit code and output."""

    async def run_beside(self, task: Task, command: list[str]) -> tuple[int, str]: ...


@runtime_checkable
class Notes(Protocol):
    """A controller with news of its running task that is not a new state (its engine went away, or
    came back): it calls `on_note(message)`, which its runner sets, and the task's status says it."""

    on_note: Callable[[str], None] | None


@runtime_checkable
class ExitFuture(Protocol):
    """A controller that can hand its runner the task's exit as a future instead of a `wait` to await:
    the runner then holds no coroutine (nor asyncio task) while the task runs, only a callback on the
    future. None: not this time (the runner awaits `wait` as usual). The future is resolved once the
    task ends, shut down or not, with what `wait` would return; a cancelled or failed future is a
    failed wait. Calling it again returns a future of the same exit."""

    def exit_future(self) -> asyncio.Future[Exit] | None: ...


@runtime_checkable
class StepsAtOnce(Protocol):
    """A controller whose prepare and start never wait (a hollow task's): `prepare_at_once` and
    `start_at_once` do what awaiting `prepare` and `start` does, and raise as they would. The runner
    then takes the task from ACCEPTED to RUNNING in the call that starts it, without an asyncio task
    (with `ExitFuture` too, it holds none while the task runs)."""

    def prepare_at_once(self) -> None: ...

    def start_at_once(self) -> None: ...


@runtime_checkable
class ImageHealth(Protocol):
    """An executor whose tasks' images may carry a health check of their own (a container image's
    HEALTHCHECK, run by the engine): each change of a task's health as the engine judges it, with what
    the check said; nothing when the image has none. Followed for tasks without a treeherd check."""

    def image_health(self, task: Task) -> AsyncIterator[tuple[Health, str]]: ...


@runtime_checkable
class StartsWithHealth(Protocol):
    """A controller that knows, once its task started, that the task has a health of its own (its image's
    health check): `start_health` ("starting" until judged, or the engine's verdict on an adopted
    task; "" when it has none) comes with the RUNNING report, so no one takes the task for ready (an
    update, moving on) before its health is known."""

    @property
    def start_health(self) -> Health: ...


@runtime_checkable
class Engine(Protocol):
    """An executor that talks to an engine of its own (dockerd): `check` says what keeps it from
    working (None: it works), `close` lets its connections go when the agent stops. An executor whose
    tasks listen on the host's own ports has `binds_host_ports` true (the agent checks them free)."""

    binds_host_ports: bool

    async def check(self) -> str | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Warnings(Protocol):
    """A controller whose task runs without something its spec asks for (a limit the host cannot
    enforce): said in the task's status message once it runs."""

    @property
    def warnings(self) -> list[str]: ...


@runtime_checkable
class Leftovers(Protocol):
    """An executor that keeps tasks on the machine across agent restarts (processes, files), so the
    agent can clean up those of tasks it no longer knows of."""

    def task_ids(self) -> list[str] | Awaitable[list[str]]: ...

    async def stop_orphan(self, task_id: str, grace_s: float) -> None: ...

    async def purge(self, task_id: str) -> None: ...
