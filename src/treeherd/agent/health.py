"""The agent's health checks: one loop per running task whose spec has a check, beside the task.

Each loop runs the check every `interval_s` (a command with the task's environment and working
directory, as the executor says, or run by the executor itself in the task's container, an HTTP GET or a TCP connect on 127.0.0.1 and the task's port),
bounded by `timeout_s`, steps `core.tasks.health.observe` and
tells the worker each change of health (`on_change(task_id, health, message)`). The worker reports it
to the manager, and fails a task that turned unhealthy when its check says `restart`. A task without a
check whose executor judges its image's own health check (a container's HEALTHCHECK) has that verdict
followed instead, as the executor says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from treeherd.core.tasks.health import HealthState, observe
from treeherd.core.tasks.task_env import task_environment
from treeherd.executors.base import CommandContext
from treeherd.model.discovery import Health, HealthCheck
from treeherd.model.services import Task

__all__ = ["HealthCheckers", "default_context", "run_check"]

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 200  # characters of a failing check's output kept in the status message
OnChange = Callable[[str, Health, str], None]
CommandContextOf = Callable[[Task], CommandContext]
# An executor's own way of running a check's command beside a task (in its container).
RunBeside = Callable[[Task, list[str]], Awaitable[tuple[int, str]]]
# An executor's verdicts on a task's image's own health check (none when the image has none).
ImageHealthOf = Callable[[Task], AsyncIterator[tuple[Health, str]]]


def check_port(task: Task, check: HealthCheck) -> int | None:
    """The host port a check talks to: the named one, else the task's first."""
    if check.port is not None:
        return task.ports.get(check.port)
    return next(iter(task.ports.values()), None)


def default_context(task: Task) -> CommandContext:
    """For an executor that says nothing of its own: the task's environment, the agent's directory."""
    return CommandContext(env=task_environment(task, os.environ, os.defpath))


async def run_check(
    task: Task, check: HealthCheck, context: CommandContext | None = None, beside: RunBeside | None = None
) -> tuple[bool, str]:
    """Run one check; (passed, what it said). Never raises for the check's own failures."""
    try:
        async with asyncio.timeout(check.timeout_s):
            if check.kind == "cmd" and beside is not None:
                code, output = await beside(task, list(check.command))
                return code == 0, output.strip()[-OUTPUT_LIMIT:] or f"exit code {code}"
            if check.kind == "cmd":
                return await _command(check, context or default_context(task))
            port = check_port(task, check)
            if port is None:
                return False, "the task has no port to check"
            if check.kind == "tcp":
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True, f"port {port} accepts connections"
            return await _http(port, check.path)
    except TimeoutError:
        return False, f"no answer within {check.timeout_s:g}s"
    except OSError as error:
        return False, str(error)


async def _command(check: HealthCheck, context: CommandContext) -> tuple[bool, str]:
    process = await asyncio.create_subprocess_exec(
        *check.command,
        env=context.env,
        cwd=context.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await process.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await process.wait()
        raise
    text = output.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
    return process.returncode == 0, text or f"exit code {process.returncode}"


async def _http(port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: treeherd-health\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        line = (await reader.readline()).decode(errors="replace").strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"not an HTTP answer: {line[:OUTPUT_LIMIT]!r}"
    status = int(parts[1])
    return 200 <= status < 400, f"GET {path}: {status}"


class HealthCheckers:
    """The check loops of this agent's running tasks."""

    def __init__(
        self,
        on_change: OnChange,
        context: CommandContextOf = default_context,
        beside: RunBeside | None = None,
        image_health: ImageHealthOf | None = None,
    ) -> None:
        self._on_change = on_change
        self._context = context
        self._beside = beside
        self._image_health = image_health
        self._loops: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._loops

    def start(self, task: Task) -> None:
        check = task.spec.health
        if task.id in self._loops:
            return
        if check is not None:
            self._loops[task.id] = asyncio.create_task(self._loop(task, check), name=f"health-{task.id}")
        elif self._image_health is not None:
            self._loops[task.id] = asyncio.create_task(self._follow(task), name=f"health-{task.id}")

    def stop(self, task_id: str) -> None:
        loop = self._loops.pop(task_id, None)
        if loop is not None:
            loop.cancel()

    def stop_all(self) -> None:
        for task_id in list(self._loops):
            self.stop(task_id)

    async def _follow(self, task: Task) -> None:
        """The executor's verdicts on the image's own health check, as they change."""
        assert self._image_health is not None
        async for health, message in self._image_health(task):
            log.info("task %s is %s: %s", task.id, health, message)
            self._on_change(task.id, health, message)

    async def _loop(self, task: Task, check: HealthCheck) -> None:
        started = time.monotonic()
        state = HealthState()
        # A task's environment and directory do not change while it runs: worked out once.
        context = self._context(task) if check.kind == "cmd" and self._beside is None else None
        self._on_change(task.id, state.health, "waiting for the first health check")
        while True:
            passed, output = await run_check(task, check, context, self._beside)
            new = observe(
                state, check, passed=passed, since_start_s=time.monotonic() - started, output=output
            )
            if new.health != state.health:
                log.info("task %s is %s: %s", task.id, new.health, output)
                self._on_change(task.id, new.health, f"health check: {output}")
            state = new
            await asyncio.sleep(check.interval_s)
