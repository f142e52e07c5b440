"""A simulated cluster for the updater: the pure reconciler (with the updater inside) and a fake agent,
one tick of simulated time at a time. The agent takes a task to STARTING in one tick, RUNNING in the
next, and healthy in the one after (when its spec has a health check, or its command is one whose image
has a check of its own: such a task runs "starting" from RUNNING on, as the docker executor reports it),
and stops a task told to stop in one tick; tasks of a bad spec fail as they start, or after running a
while, in the slots chosen to fail; tasks of a sick command turn unhealthy instead of healthy."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec

from treeherd.core.tasks.orchestrate import reconcile
from treeherd.model.discovery import Endpoint, HealthCheck
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import (
    RestartPolicy,
    Service,
    Task,
    TaskSpec,
    TaskStatus,
    UpdatePolicy,
    UpdateStatus,
)
from treeherd.model.states import TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MACHINE = Machine(id="m1", created_at=T0, updated_at=T0, hostname="h1", agent=AgentStatus(state="ready"))


def spec(command: str, *, health: bool = False) -> TaskSpec:
    return TaskSpec(
        command=[command],
        restart=RestartPolicy(delay_s=1),
        health=HealthCheck(kind="cmd", command=["true"]) if health else None,
    )


class Sim:
    """A service of `replicas` running tasks of `old`, all running (and healthy) at the start."""

    def __init__(
        self,
        replicas: int,
        old: TaskSpec,
        policy: UpdatePolicy,
        rollback: UpdatePolicy | None = None,
        *,
        mode: str = "replicated",
        machines: int = 1,
        endpoints: bool = False,
    ) -> None:
        # With `endpoints`, every running task is registered (as its agent would report it), so an
        # update drains a task before it stops it.
        self.endpoints = endpoints
        # Why the previous spec no longer validates, as the orchestrator would say (None: it does).
        self.rollback_refused: str | None = None
        self.now = T0
        self._counter = itertools.count(1)
        self.machines = (
            {MACHINE.id: MACHINE}
            if mode == "replicated"
            else {
                f"m{i}": msgspec.structs.replace(MACHINE, id=f"m{i}", hostname=f"h{i}")
                for i in range(1, machines + 1)
            }
        )
        self.service = Service(
            id="svc",
            created_at=T0,
            updated_at=T0,
            name="web",
            node_id="n",
            mode=mode,  # type: ignore[arg-type]
            replicas=replicas if mode == "replicated" else 0,
            task=old,
            update=policy,
            rollback=rollback or policy,
        )
        self.tasks: dict[str, Task] = {}
        self.bad: set[str] = set()  # commands that fail
        self.image_checked: set[str] = set()  # commands whose image has a health check of its own
        self.sick: set[str] = set()  # commands whose health check fails
        self.crash_after_s: float | None = None  # None: a bad task fails as it starts
        self.failing_slots: set[str] | None = None  # None: every slot
        self.ticks = 0
        self.deregistered: set[str] = set()  # tasks whose registrations the manager removed
        # Seen after every decision since the last `watch()` (a task that crashes on its own between two
        # decisions is not the updater's doing; the next decision sees it).
        self.most_down = 0
        self.fewest_ready: int | None = None
        self.failed: set[str] = set()  # slots where a task failed
        for _ in range(4):
            self.tick()

    def update(self, new: TaskSpec) -> None:
        """What `service update` writes (core.tasks.services.plan_update_service)."""
        self.service = msgspec.structs.replace(
            self.service,
            task=new,
            previous_task=self.service.task,
            spec_version=self.service.spec_version + 1,
            update_status=UpdateStatus(state="updating", started_at=self.now, message="update in progress"),
        )

    def _next_id(self) -> str:
        return f"t{next(self._counter)}"

    def reconcile(self) -> None:
        registered = {
            t.id: [
                Endpoint(
                    id=f"e-{t.id}",
                    created_at=T0,
                    updated_at=T0,
                    service="web",
                    address="127.0.0.1",
                    port=1,
                    source="task",
                    task_id=t.id,
                )
            ]
            for t in self.running()
            if self.endpoints
        }
        result = reconcile(
            self.service,
            list(self.tasks.values()),
            self.machines,
            self.now,
            self._next_id,
            endpoints=registered,
            rollback_refused=self.rollback_refused,
        )
        for op in result.ops:
            obj = op.object
            if isinstance(obj, Service):
                assert isinstance(op, Update)
                self.service = obj
            elif isinstance(obj, Endpoint):
                assert isinstance(op, Delete) and obj.task_id is not None
                self.deregistered.add(obj.task_id)
            elif isinstance(obj, Task):
                if isinstance(op, Delete):
                    del self.tasks[obj.id]
                else:
                    assert isinstance(op, Create | Update)
                    self.tasks[obj.id] = obj

    def tick(self) -> None:
        """The manager decides, then a second passes and the agent acts."""
        self.reconcile()
        self._observe()
        self.now += timedelta(seconds=1)
        self.ticks += 1
        for task in list(self.tasks.values()):
            status = self._agent(task)
            if status is not None:
                if status.state == TaskState.FAILED:
                    self.failed.add(self.key(task))
                self.tasks[task.id] = msgspec.structs.replace(
                    task, status=status, machine_id=task.machine_id or "m1"
                )

    def watch(self) -> None:
        """Start recording the worst moments from now on."""
        self.most_down = 0
        self.fewest_ready = None

    def _observe(self) -> None:
        self.most_down = max(self.most_down, self.slots_without_running())
        ready = len(self.ready())
        self.fewest_ready = ready if self.fewest_ready is None else min(self.fewest_ready, ready)

    def _fails(self, task: Task) -> bool:
        key = str(task.slot) if self.service.mode == "replicated" else task.machine_id or ""
        return task.spec.command[0] in self.bad and (self.failing_slots is None or key in self.failing_slots)

    def _agent(self, task: Task) -> TaskStatus | None:
        state = task.status.state
        if state.terminal:
            return None
        if task.desired_state > TaskState.RUNNING:
            if self.endpoints and state == TaskState.RUNNING:
                assert task.id in self.deregistered, f"{task.id} stopped while still an endpoint"
            return TaskStatus(state=TaskState.SHUTDOWN, timestamp=self.now)
        if state < TaskState.STARTING:
            if task.restart_at is not None and task.restart_at > self.now:
                return None
            return TaskStatus(state=TaskState.STARTING, timestamp=self.now)
        if state == TaskState.STARTING:
            if self._fails(task) and self.crash_after_s is None:
                return TaskStatus(state=TaskState.FAILED, timestamp=self.now, exit_code=1)
            checked = task.spec.health is not None or task.spec.command[0] in self.image_checked
            return TaskStatus(
                state=TaskState.RUNNING, timestamp=self.now, health="starting" if checked else ""
            )
        crash = self.crash_after_s
        if (
            crash is not None
            and self._fails(task)
            and (self.now - task.status.timestamp).total_seconds() >= crash
        ):
            return TaskStatus(state=TaskState.FAILED, timestamp=self.now, exit_code=1)
        if task.status.health == "starting":
            health = "unhealthy" if task.spec.command[0] in self.sick else "healthy"
            return TaskStatus(state=TaskState.RUNNING, timestamp=self.now, health=health)
        return None

    # ---- what the properties look at -------------------------------------------------------------
    def live(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.desired_state <= TaskState.RUNNING]

    def running(self) -> list[Task]:
        """Running and serving (a task being drained serves no more)."""
        return [t for t in self.live() if t.status.state == TaskState.RUNNING and t.drain_until is None]

    def ready(self) -> list[Task]:
        """Running, and healthy when it has a health (its spec's check, or its image's own)."""
        return [
            t
            for t in self.running()
            if t.status.health == "healthy" or (t.spec.health is None and not t.status.health)
        ]

    def slot_keys(self) -> list[str]:
        if self.service.mode == "replicated":
            return [str(n) for n in range(1, self.service.replicas + 1)]
        return sorted(self.machines)

    def key(self, task: Task) -> str:
        return str(task.slot) if self.service.mode == "replicated" else task.machine_id or ""

    def slots_without_running(self) -> int:
        """Not counting slots whose new task failed (a failure the ratio tolerates may stay down)."""
        up = {self.key(t) for t in self.running()}
        return sum(1 for key in self.slot_keys() if key not in up and key not in self.failed)

    def state(self) -> str:
        status = self.service.update_status
        return "" if status is None else status.state

    def specs_by_slot(self) -> dict[str, list[TaskSpec]]:
        found: dict[str, list[TaskSpec]] = {key: [] for key in self.slot_keys()}
        for task in self.live():
            found.setdefault(self.key(task), []).append(task.spec)
        return found
