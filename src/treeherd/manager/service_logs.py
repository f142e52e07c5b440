"""A service's logs: the output of its current tasks, streamed from their agents and merged by line.

Each line is prefixed with the task it came from (`web.2@host-1 | `, or `web@host-1 | ` for a global
service), as `docker service logs` does. A task whose agent cannot be reached adds one line saying so
instead of failing the whole stream. The current task of a slot (or of a machine, for a global service)
is the newest one that was placed, so a task that just failed still shows what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from treeherd.core.tasks.orchestrate import desired_running
from treeherd.core.view import View
from treeherd.model.errors import TreeherdError
from treeherd.model.objects import Machine
from treeherd.model.services import Service, Task

__all__ = ["current_tasks", "merge_task_logs", "task_label"]

TaskLogs = Callable[[Task], AsyncIterator[bytes]]
QUEUE_LINES = 1_000


def current_tasks(view: View, service: Service) -> list[Task]:
    """The newest placed task of each slot (replicated) or machine (global), slots in order."""
    newest: dict[tuple[int, str], Task] = {}
    for task in view.referrers(Task, "service", service.id):
        if task.machine_id is None:
            continue
        key = (task.slot, "") if service.mode == "replicated" else (0, task.machine_id)
        held = newest.get(key)
        rank = (desired_running(task), task.created_at)
        if held is None or rank > (desired_running(held), held.created_at):
            newest[key] = task
    return [newest[key] for key in sorted(newest)]


def task_label(view: View, task: Task) -> str:
    machine = view.get(Machine, task.machine_id) if task.machine_id else None
    host = machine.hostname if machine is not None else "?"
    slot = f".{task.slot}" if task.slot else ""
    return f"{task.service_name}{slot}@{host}"


async def merge_task_logs(labelled: Sequence[tuple[str, Task]], logs: TaskLogs) -> AsyncIterator[bytes]:
    """Every task's output, line by line, each line prefixed with its label, in arrival order."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_LINES)

    async def pump(label: str, task: Task) -> None:
        prefix = f"{label} | ".encode()
        pending = b""
        try:
            async for chunk in logs(task):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    await queue.put(prefix + line + b"\n")
            if pending:
                await queue.put(prefix + pending + b"\n")
        except TreeherdError as error:
            if pending:
                await queue.put(prefix + pending + b"\n")
            await queue.put(prefix + f"(no logs: {error.detail})\n".encode())
        finally:
            await queue.put(None)

    pumps = [asyncio.create_task(pump(label, task)) for label, task in labelled]
    try:
        running = len(pumps)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for pump_task in pumps:
            pump_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pumps, return_exceptions=True)
