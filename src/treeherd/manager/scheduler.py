"""The scheduler component: places PENDING tasks with `core.tasks.scheduling.schedule` and commits ASSIGNED.

It keeps a `NodeSet` (every machine and what is counted on it) in step with the store's events, so a
batch costs what it places, not the cluster's size. Decisions are made in memory for a batch and
committed once, in chunks, machine by machine: a batch spread over 5,000 machines in chunks of a
quarter of it would otherwise give every agent a quarter of its tasks in each chunk, each quarter its
own assignment message, status report and acknowledgement. A decision whose task or machine changed
since it was made is dropped and its task tried again. A task no machine can take stays PENDING with the reason in `placement_error`
(written only when it changes); such tasks are tried again when a machine, a service or a task that
held resources changes, not on every status update.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from treeherd.core.tasks.orchestrate import finished
from treeherd.core.tasks.scheduling.nodeinfo import NodeSet
from treeherd.core.tasks.scheduling.scheduler import schedule
from treeherd.manager.commits import RETRY_S, RefusedChunk, chunk_size, commit_chunks
from treeherd.manager.reactor import Reactor
from treeherd.model.events import Change
from treeherd.model.objects import Machine
from treeherd.model.ops import Op, Update
from treeherd.model.services import Service, Task, TaskStatus
from treeherd.model.states import TaskState
from treeherd.runtime import utc_now
from treeherd.store.base import Store


def _placeable(task: Task) -> bool:
    return task.status.state == TaskState.PENDING and task.desired_state <= TaskState.RUNNING


def _machine_of(op: Op) -> str:
    """The machine a scheduler's write places its task on ("" for a task left unplaced)."""
    task = op.object
    assert isinstance(task, Task)
    return task.machine_id or ""


class Scheduler(Reactor):
    name = "scheduler"

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        debounce_s: float = 0.05,
        max_delay_s: float = 1.0,
    ) -> None:
        super().__init__(store, debounce_s=debounce_s, max_delay_s=max_delay_s, clock=clock)
        self.node_set = NodeSet()
        self._new: set[str] = set()  # pending tasks not tried yet
        self._unplaced: set[str] = set()  # pending tasks no machine could take last time
        self._retry = False

    def start(self) -> None:
        view = self.store.view()
        # Inventory machines without an agent are not cluster nodes: they take no task and do not count in
        # explanations ("2 nodes not ready" means agents that are not ready).
        self.node_set = NodeSet.from_objects(
            (m for m in view.all(Machine) if m.agent is not None), view.all(Task)
        )
        self._new = {t.id for t in view.all(Task) if _placeable(t)}

    def handle(self, change: Change) -> None:
        for event in change.events:
            obj = event.object
            if isinstance(obj, Task):
                if event.type == "deleted":
                    self.node_set.task_changed(obj, None)
                    self._forget(obj.id)
                    self._retry = True
                    continue
                self.node_set.task_changed(None, obj)
                if _placeable(obj):
                    if obj.id not in self._unplaced:
                        self._new.add(obj.id)
                else:
                    self._forget(obj.id)
                    if finished(obj):
                        self._retry = True  # it may have freed resources or a Conflicts slot
            elif isinstance(obj, Machine):
                if event.type == "deleted" or obj.agent is None:
                    self.node_set.remove_machine(obj.id)
                else:
                    self.node_set.set_machine(obj)
                self._retry = True
            elif isinstance(obj, Service):
                self._retry = True

    def has_work(self) -> bool:
        return bool(self._new) or (self._retry and bool(self._unplaced))

    def _forget(self, task_id: str) -> None:
        self._new.discard(task_id)
        self._unplaced.discard(task_id)

    async def act(self) -> None:
        candidates = self._new | (self._unplaced if self._retry else set())
        self._new = set()
        self._retry = False
        if not candidates:
            self.wake_at = None
            return
        view = self.store.view()
        tasks = [
            t for t in (view.get(Task, i) for i in sorted(candidates)) if t is not None and _placeable(t)
        ]
        services = {s.id: s for s in view.all(Service)}
        decisions = schedule(self.node_set, tasks, services)
        now = self.clock()
        by_id = {t.id: t for t in tasks}
        ops: list[Op] = []
        for assignment in decisions.assigned:
            task = view.get(Task, assignment.task_id)
            machine = view.get(Machine, assignment.machine_id)
            if (
                task is None
                or machine is None
                or task.version != assignment.task_version
                or machine.version != assignment.machine_version
            ):
                self.node_set.release(assignment.task_id)
                self._new.add(assignment.task_id)
                continue
            status = TaskStatus(
                state=TaskState.ASSIGNED, timestamp=now, message=f"assigned to {machine.hostname}"
            )
            ops.append(
                Update(
                    msgspec.structs.replace(
                        task, machine_id=machine.id, status=status, placement_error="", updated_at=now
                    )
                )
            )

        for task_id, why in decisions.unplaced.items():
            self._unplaced.add(task_id)
            task = by_id[task_id]
            if task.placement_error != why:
                ops.append(Update(msgspec.structs.replace(task, placement_error=why, updated_at=now)))
        ops.sort(key=_machine_of)  # stable: each machine's tasks in the order they were decided
        committed = await commit_chunks(
            self.store,
            ops,
            f"placement of {len(ops)} tasks",
            size=chunk_size(view),
            on_refused_chunk=RefusedChunk.CONTINUE,
            refused=self._refused,
        )
        self.wake_at = now + timedelta(seconds=RETRY_S) if not committed or self._new else None

    def _refused(self, chunk: list[Op]) -> None:
        """A chunk of decisions was not committed: give back what they counted and place them again."""
        for op in chunk:
            assert isinstance(op.object, Task)
            if op.object.status.state == TaskState.ASSIGNED:
                self.node_set.release(op.object.id)
            self._new.add(op.object.id)
