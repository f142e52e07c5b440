"""The allocator component: gives NEW tasks their host ports and moves them to PENDING.

A task that needs nothing from it (no port without a number, no required service, no restart delay) is
created PENDING by the orchestrator (`core.tasks.allocate.creation_allocation`) and never waits here.

It holds the cluster's dynamic port pool in memory, rebuilt from the store at start (every task not
finished keeps its ports), and frees a task's ports once it is finished or deleted. Allocations are
committed in chunks; a chunk that loses a race is retried from the new state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from treeherd.core.edge.discovery import service_endpoints
from treeherd.core.tasks.allocate import PortPool, allocate, busy_port_of, dynamic_ports
from treeherd.core.tasks.orchestrate import finished
from treeherd.manager.commits import RETRY_S, RefusedChunk, chunk_size, commit_chunks
from treeherd.manager.reactor import Reactor
from treeherd.model.events import Change
from treeherd.model.ops import Op, Update
from treeherd.model.services import Task
from treeherd.model.states import TaskState
from treeherd.runtime import utc_now
from treeherd.store.base import Store


class Allocator(Reactor):
    name = "allocator"

    def __init__(
        self, store: Store, *, clock: Callable[[], datetime] = utc_now, debounce_s: float = 0.02
    ) -> None:
        super().__init__(store, debounce_s=debounce_s, clock=clock)
        self.pool = PortPool()
        self._ports: dict[str, list[int]] = {}
        self._pending: set[str] = set()

    def start(self) -> None:
        for task in self.store.view().all(Task):
            self._note(task)

    def _note(self, task: Task) -> None:
        busy = busy_port_of(task)  # an agent found this port in use on its host: hand it out later
        if busy is not None:
            self.pool.mark_busy(busy, self.clock())
        if finished(task):
            self.pool.release(self._ports.pop(task.id, ()))
            return
        if task.ports and task.id not in self._ports:
            ports = dynamic_ports(task)
            self._ports[task.id] = ports
            self.pool.hold(ports)
        if task.status.state == TaskState.NEW and task.desired_state <= TaskState.RUNNING:
            self._pending.add(task.id)

    def handle(self, change: Change) -> None:
        for event in change.events:
            task = event.object
            if not isinstance(task, Task):
                continue
            if event.type == "deleted":
                self.pool.release(self._ports.pop(task.id, ()))
                self._pending.discard(task.id)
            else:
                self._note(task)

    def has_work(self) -> bool:
        return bool(self._pending)  # tasks to allocate, or waiting for a required service's endpoint

    async def act(self) -> None:
        now = self.clock()
        view = self.store.view()
        tasks = [t for t in (view.get(Task, i) for i in sorted(self._pending)) if t is not None]
        self._pending = set()
        ops, waiting = allocate(tasks, self.pool, now, lambda name: bool(service_endpoints(view, name)))
        self._pending.update(waiting)
        await commit_chunks(
            self.store,
            ops,
            f"allocation of {len(ops)} tasks",
            size=chunk_size(view),
            on_refused_chunk=RefusedChunk.CONTINUE,
            refused=self._refused,
        )
        wakes = [t.restart_at for t in tasks if t.id in waiting and t.restart_at is not None]
        if len(self._pending) > len(waiting):
            wakes.append(now + timedelta(seconds=RETRY_S))
        self.wake_at = min(wakes) if wakes else None

    def _refused(self, chunk: list[Op]) -> None:
        """A chunk of allocations was not committed: free its ports and allocate its tasks again."""
        for op in chunk:
            assert isinstance(op, Update) and isinstance(op.object, Task)
            if op.object.ports:
                self.pool.release(dynamic_ports(op.object))
            self._pending.add(op.object.id)
