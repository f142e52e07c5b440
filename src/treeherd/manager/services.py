"""Reads and writes of services and their tasks: the shell over core.tasks.services' plans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime
from typing import overload

from treeherd.core.tasks import services as plans
from treeherd.core.tasks.service_checks import service_by_name
from treeherd.core.tasks.task_rows import task_row, task_rows
from treeherd.core.view import View
from treeherd.manager.commits import Lost, commit_plan
from treeherd.model.errors import NotFound
from treeherd.model.objects import Machine, TreeNode
from treeherd.model.ops import Op
from treeherd.model.requests import ServiceCreate, ServiceUpdate
from treeherd.model.services import Service, Task
from treeherd.model.tasks_view import ServiceSummary, StoryEntry, TaskRow
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Store


class Services:
    def __init__(
        self, store: Store, *, clock: Callable[[], datetime] = utc_now, ids: Callable[[], str] = new_id
    ) -> None:
        self.store = store
        self._clock = clock
        self._ids = ids

    # ---- writes ----------------------------------------------------------------------------------
    async def create(self, request: ServiceCreate) -> Service:
        committed = await commit_plan(
            self.store, lambda v: plans.plan_create_service(v, request, self._clock(), self._ids)
        )
        service = committed.objects[0]
        assert isinstance(service, Service)
        return service

    async def update(self, name: str, request: ServiceUpdate) -> Service:
        committed = await commit_plan(
            self.store,
            lambda v: plans.plan_update_service(v, name, request, self._clock()),
            on_conflict=Lost.RAISE if request.version is not None else Lost.RETRY,
        )
        service = committed.objects[0]
        assert isinstance(service, Service)
        return service

    async def rollback(self, name: str) -> Service:
        committed = await commit_plan(
            self.store, lambda v: plans.plan_rollback_service(v, name, self._clock())
        )
        service = committed.objects[0]
        assert isinstance(service, Service)
        return service

    async def promote(self, name: str) -> Service:
        return await self._one(lambda v: plans.plan_promote_service(v, name, self._clock()))

    async def abort(self, name: str) -> Service:
        return await self._one(lambda v: plans.plan_abort_service(v, name, self._clock()))

    async def _one(self, plan: Callable[[View], list[Op]]) -> Service:
        committed = await commit_plan(self.store, plan)
        service = committed.objects[0]
        assert isinstance(service, Service)
        return service

    async def remove(self, name: str) -> None:
        await commit_plan(self.store, lambda v: plans.plan_remove_service(v, name, self._clock()))

    # ---- reads -----------------------------------------------------------------------------------
    def get(self, name: str) -> Service:
        return service_by_name(self.store.view(), name)

    def summary(self, service: Service) -> ServiceSummary:
        view = self.store.view()
        node = view.get(TreeNode, service.node_id)
        # Counted by the store as tasks change (model.kinds' task tallies): no walk over the tasks.
        running = view.tally(Task, "running", service.id)
        desired = (
            service.replicas if service.mode == "replicated" else view.tally(Task, "desired", service.id)
        )
        return ServiceSummary(
            service=service, path=node.path if node else service.node_id, running=running, desired=desired
        )

    def overview(self) -> list[ServiceSummary]:
        return [self.summary(s) for s in sorted(self.store.view().all(Service), key=lambda s: s.name)]

    def tasks(self, name: str, *, all_tasks: bool = True) -> list[TaskRow]:
        """A service's tasks by slot, current first, then history (in one synchronous pass: for a
        service of many tasks, `task_pages` lets the loop run meanwhile)."""
        return [row for rows in self._row_steps(name, all_tasks) for row in rows]

    def task_pages(self, name: str, *, all_tasks: bool = True) -> AsyncIterator[list[TaskRow]]:
        """`tasks` in lists of a few thousand rows, with the event loop let run between them: a list
        of a million tasks must not keep heartbeats and reports waiting for seconds. Raises NotFound
        before the first list for a service that does not exist."""
        return _paused(self._row_steps(name, all_tasks))

    def _row_steps(self, name: str, all_tasks: bool) -> Iterator[list[TaskRow]]:
        """The steps of `core.tasks.task_rows` over the service's tasks as they are now (NotFound at
        once, not at the first step)."""
        service = self.get(name)
        view = self.store.view()
        tasks = _TasksByIds(view, view.referrer_ids(Task, "service", service.id))
        return task_rows(view, service, tasks, all_tasks=all_tasks)

    def task(self, task_id: str) -> Task:
        task = self.store.view().get(Task, task_id)
        if task is None:
            raise NotFound(
                f"no task {task_id!r} (list tasks with: treeherd service ps SERVICE)", field="task"
            )
        return task

    def row(self, task: Task, *, outdated: bool = False) -> TaskRow:
        return task_row(self.store.view(), task, outdated=outdated)

    def story(self, task_id: str) -> list[StoryEntry]:
        """Every retained version of the task, oldest first: each transition and what caused it."""
        entries: list[StoryEntry] = []
        view = self.store.view()
        for change in self.store.history():
            for event in change.events:
                task = event.object
                if not isinstance(task, Task) or task.id != task_id:
                    continue
                machine = view.get(Machine, task.machine_id) if task.machine_id else None
                entries.append(
                    StoryEntry(
                        revision=change.revision,
                        time=task.updated_at,
                        event=event.type,
                        desired_state=task.desired_state.label,
                        state=task.status.state.label,
                        message=task.placement_error or task.status.error or task.status.message,
                        hostname=machine.hostname if machine else None,
                    )
                )
        if not entries:
            self.task(task_id)  # raises NotFound for an unknown task
        return entries


class _TasksByIds(Sequence[Task]):
    """A service's tasks by their ids, each slice read from the view when it is asked for: `task_rows`
    reads a step's slice at a time, so the tasks of a million are not read in one call (half a second
    of the loop; their ids take a few hundredths). A task gone by its slice's turn is left out."""

    def __init__(self, view: View, ids: list[str]) -> None:
        self._view = view
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> Task: ...

    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...

    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        get = self._view.get
        if isinstance(index, slice):
            return [task for id in self._ids[index] if (task := get(Task, id)) is not None]
        task = get(Task, self._ids[index])
        if task is None:
            raise IndexError(f"task {self._ids[index]} is gone")
        return task


async def _paused(steps: Iterator[list[TaskRow]]) -> AsyncIterator[list[TaskRow]]:
    for rows in steps:
        if rows:
            yield rows
        await asyncio.sleep(0)  # let the loop run between steps
