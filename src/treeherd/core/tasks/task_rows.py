"""A service's tasks as `service ps` rows, in its order, built a bounded number of tasks at a time.

A service may have a million tasks. Building all their rows in one synchronous pass holds the
manager's event loop for seconds (at 1,000,000 tasks, 6 s and more), and a loop held that long reads
no heartbeat: agents give up their sessions. `task_rows` is a generator that does the work in steps of
at most `step` tasks and yields between them, so its driver can let the loop run; concatenated, what
it yields is the whole list.

The order is a task's slot, then its machine (a global service's tasks share slot 0), running before
stopped, newest first. Slots are dense small integers (1 to the replica count, plus the slots of
removed replicas), so they are walked rather than sorted (`slots.slots_in_order`): sorting a million
keyed tasks in one call would itself hold the loop for a second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from treeherd.core.tasks.rollout import stale_versions
from treeherd.core.tasks.slots import desired_running, file_by_slot, slots_in_order
from treeherd.core.view import View
from treeherd.model.objects import Machine
from treeherd.model.services import Service, Task
from treeherd.model.states import TaskState
from treeherd.model.tasks_view import TaskRow

__all__ = ["STEP", "task_row", "task_rows"]

STEP = 5_000  # tasks per step: a few milliseconds of work


def task_row(view: View, task: Task, *, outdated: bool = False) -> TaskRow:
    """One task as `service ps` shows it; `outdated` when an update is to replace it."""
    machine = view.get(Machine, task.machine_id) if task.machine_id else None
    return TaskRow(
        id=task.id,
        service=task.service_name,
        slot=task.slot,
        hostname=machine.hostname if machine else None,
        desired_state=task.desired_state.label,
        state=task.status.state.label,
        health=task.status.health if task.status.state == TaskState.RUNNING else "",
        since=task.status.timestamp,
        message=task.status.message,
        error=task.status.error,
        placement_error=task.placement_error,
        ports=task.ports,
        spec_version=task.spec_version,
        cause=task.cause,
        restart_at=task.restart_at,
        outdated=outdated,
    )


def _within_slot(task: Task) -> tuple[str, bool, float]:
    return (task.machine_id or "", not desired_running(task), -task.created_at.timestamp())


def task_rows(
    view: View, service: Service, tasks: Sequence[Task], *, all_tasks: bool = True, step: int = STEP
) -> Iterator[list[TaskRow]]:
    """The rows of `tasks` (the service's: `view.referrers`, or a sequence that reads them a slice at a
    time), in `service ps` order: one list per step, each step reading `step` tasks, or walking slots
    and making rows until their count reaches `step` (it finishes the slot it is in). A list may be
    empty: a pause all the same. Only the tasks meant to run when not `all_tasks`.

    `tasks` is read a slice of `step` at a time, in the first steps (a lazy sequence may read each
    slice's tasks from the store only then); `view` is read again at each step, for the hostnames, so
    a pause may let it move on."""
    step = max(1, step)
    by_slot: dict[int, Task | list[Task]] = {}
    stale: set[int] = set()
    for start in range(0, len(tasks), step):
        chunk = tasks[start : start + step]
        if not all_tasks:
            chunk = [t for t in chunk if desired_running(t)]
        stale |= stale_versions(service, chunk)
        file_by_slot(by_slot, chunk)
        yield []
    rows: list[TaskRow] = []
    work = 0  # slots walked and rows made since the last pause
    for slot in slots_in_order(by_slot):
        work += 1
        held = by_slot.get(slot)
        if isinstance(held, list):
            held.sort(key=_within_slot)
            rows.extend(task_row(view, t, outdated=t.spec_version in stale) for t in held)
            work += len(held)
        elif held is not None:
            rows.append(task_row(view, held, outdated=held.spec_version in stale))
            work += 1
        if work >= step:
            yield rows  # possibly empty (a stretch of slots with no task): a pause all the same
            rows, work = [], 0
    if rows:
        yield rows
