"""The orchestrator's decision: given a service, its tasks and the machines, what to create, stop, delete.

Replicated services have slots 1..replicas; global services one task per eligible machine. In each slot
(or on each machine) at most one task is meant to run (desired state RUNNING). A task that must stop is
given desired state SHUTDOWN (the agent stops it; only the agent reports it stopped), and a replacement is
created when the reason calls for one:
- the task ended (observed terminal): per the restart policy (condition, max attempts in a window, delay);
- its machine went down (unless the brake on mass node loss holds it, `core.tasks.node_loss`), was drained,
  was removed, or no longer satisfies the constraints (the typed reasons of `core.tasks.machine_problems`):
  always (unless the restart condition is `none` and the machine went down);
- the service's spec changed (an update never changes a running task: it replaces it).
A slot that never had a task gets a new one; a slot whose last task ended without a restart stays empty.
Finished tasks beyond the history limit are deleted, oldest first. A removed service stops every task,
then is deleted with them once none is left running.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta

import msgspec

from treeherd.core.tasks.machine_problems import ProblemKind, agent_down, machine_problem
from treeherd.core.tasks.scheduling.constraints import Constraint, parse_constraint
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.services import RestartPolicy, Service, Task, TaskStatus
from treeherd.model.states import TaskState


class Reconciled(msgspec.Struct, frozen=True):
    """The operations to commit, and when to look again (a restart delay ends, say)."""

    ops: list[Op]
    wake_at: datetime | None = None


def desired_running(task: Task) -> bool:
    return task.desired_state <= TaskState.RUNNING


def finished(task: Task) -> bool:
    """A task that will never run again: ended, or stopped before any machine got it."""
    return task.status.state.terminal or (not desired_running(task) and task.machine_id is None)


def restart_allowed(policy: RestartPolicy, state: TaskState) -> bool:
    """Whether a task that ended in `state` is restarted, by the policy's condition."""
    if policy.condition == "none":
        return False
    if policy.condition == "on-failure":
        return state in (TaskState.FAILED, TaskState.REJECTED)
    return True


class _Context:
    """What every slot's decision needs."""

    def __init__(
        self,
        service: Service,
        machines: Mapping[str, Machine],
        now: datetime,
        new_id: Callable[[], str],
        history: int,
        node_path: str,
        held: AbstractSet[str],
    ) -> None:
        self.held = held
        self.service = service
        self.node_path = node_path
        self.machines = machines
        self.now = now
        self.new_id = new_id
        self.history = max(1, history)
        self.constraints = [parse_constraint(c) for c in service.task.placement.constraints]
        self.ops: list[Op] = []
        self.wake_at: datetime | None = None

    def shutdown(self, task: Task, reason: str) -> None:
        status = task.status
        if task.machine_id is None and status.state < TaskState.ASSIGNED:
            # No agent ever had it: nobody else will report it stopped.
            status = TaskStatus(state=TaskState.SHUTDOWN, timestamp=self.now, message=f"shut down: {reason}")
        self.ops.append(
            Update(
                msgspec.structs.replace(
                    task, desired_state=TaskState.SHUTDOWN, status=status, updated_at=self.now
                )
            )
        )

    def create(
        self, slot: int, machine_id: str | None, cause: str, previous: Task | None, restart: bool
    ) -> None:
        policy = self.service.task.restart
        restarts: list[datetime] = []
        restart_at = None
        if previous is not None:
            # The slot's restart record carries over every replacement, so attempts are counted per slot.
            restarts = self.recent_restarts(previous)
        if previous is not None and restart:
            if policy.max_attempts:
                restarts = [*restarts, self.now][-policy.max_attempts :]
            ended = previous.status.timestamp if previous.status.state.terminal else self.now
            due = ended + timedelta(seconds=policy.delay_s)
            if due > self.now:
                restart_at = due
                self.wake_at = due if self.wake_at is None else min(self.wake_at, due)
        task = Task(
            id=self.new_id(),
            created_at=self.now,
            updated_at=self.now,
            service_id=self.service.id,
            service_name=self.service.name,
            node_path=self.node_path,
            slot=slot,
            machine_id=machine_id,
            status=TaskStatus(state=TaskState.NEW, timestamp=self.now, message=cause),
            spec=self.service.task,
            spec_version=self.service.spec_version,
            cause=cause,
            restart_at=restart_at,
            restarts=restarts,
        )
        self.ops.append(Create(task))

    def recent_restarts(self, previous: Task) -> list[datetime]:
        """The slot's restarts within the policy's window (all of them when the window is 0)."""
        window_s = self.service.task.restart.window_s
        cutoff = self.now - timedelta(seconds=window_s)
        return [t for t in previous.restarts if not window_s or t > cutoff]

    def attempts_left(self, previous: Task) -> bool:
        max_attempts = self.service.task.restart.max_attempts
        return not max_attempts or len(self.recent_restarts(previous)) < max_attempts

    def collect_history(self, tasks: Sequence[Task], keep_ids: set[str]) -> None:
        done = sorted((t for t in tasks if finished(t) and t.id not in keep_ids), key=lambda t: t.created_at)
        for task in done[: max(0, len(done) - self.history)]:
            self.ops.append(Delete(task))

    def reconcile_slot(self, slot: int, tasks: Sequence[Task], machine_id: str | None, wanted: bool) -> None:
        """One slot (or one global machine): at most one task meant to run, replaced as needed."""
        ordered = sorted(tasks, key=lambda t: t.created_at)
        live = [t for t in ordered if desired_running(t)]
        if not wanted:
            for task in live:
                self.shutdown(task, "not wanted here any more")
            self.collect_history(ordered, set())
            return
        keep: Task | None = None
        replace: tuple[Task, str, bool] | None = None  # (previous, cause, counts as a restart)
        for task in live:
            if task.status.state.terminal:
                reason = f"task {task.id} ended ({task.status.state.label})"
                self.shutdown(task, reason)
                ok = restart_allowed(self.service.task.restart, task.status.state) and self.attempts_left(
                    task
                )
                replace = (task, f"restart after {reason}", True) if ok else None
            elif (
                problem := machine_problem(task, self.machines, self.constraints, self.held)
            ) and problem.replaces_task:
                self.shutdown(task, problem.message)
                node_down = problem.kind is ProblemKind.DOWN
                allowed = not (node_down and self.service.task.restart.condition == "none")
                replace = (task, f"replacement of {task.id}: {problem.message}", False) if allowed else None
            elif task.spec_version < self.service.spec_version:
                self.shutdown(task, "the service was updated")
                replace = (task, f"update of {task.id} to spec {self.service.spec_version}", False)
            elif keep is not None:
                self.shutdown(keep, "a newer task runs in this slot")
                keep = task
            else:
                keep = task
        if keep is None:
            if replace is not None:
                previous, cause, restart = replace
                self.create(slot, machine_id, cause, previous, restart)
            elif not ordered:
                self.create(
                    slot, machine_id, "new slot" if machine_id is None else "new machine", None, False
                )
        self.collect_history(ordered, {keep.id} if keep else set())


def eligible_for_global(machine: Machine, constraints: Sequence[Constraint]) -> bool:
    """A machine a global service runs on: has a live agent, is not drained, satisfies the constraints."""
    if machine.agent is None or agent_down(machine) or machine.availability == "drain":
        return False
    return all(c.matches(machine) for c in constraints)


def reconcile(
    service: Service,
    tasks: Sequence[Task],
    machines: Mapping[str, Machine],
    now: datetime,
    new_id: Callable[[], str],
    *,
    history: int = 5,
    node_path: str = "",
    held: AbstractSet[str] = frozenset(),
    bound_to: AbstractSet[str] = frozenset(),
) -> Reconciled:
    """What the service's tasks should become; see the module docstring for the rules.
    `node_path` is the tree path of the service's node, recorded in the tasks it creates; `held` are
    down machines whose tasks are not replaced yet (`core.tasks.node_loss`); `bound_to`, for a sidekick
    (`binds_to`), the machines that run a live task of the service it is bound to."""
    ctx = _Context(service, machines, now, new_id, history, node_path, held)
    if service.removing:
        live = [t for t in tasks if desired_running(t)]
        for task in live:
            ctx.shutdown(task, "the service was removed")
        if not live and all(finished(t) or _on_lost_machine(t, machines) for t in tasks):
            ctx.ops.extend(Delete(t) for t in tasks)
            ctx.ops.append(Delete(service))
        return Reconciled(ctx.ops, ctx.wake_at)
    if service.mode == "replicated" and service.task.binds_to is None:
        by_slot: dict[int, list[Task]] = defaultdict(list)
        for task in tasks:
            by_slot[task.slot].append(task)
        for slot in sorted(set(by_slot) | set(range(1, service.replicas + 1))):
            ctx.reconcile_slot(slot, by_slot.get(slot, []), None, slot <= service.replicas)
    else:
        by_machine: dict[str, list[Task]] = defaultdict(list)
        for task in tasks:
            by_machine[task.machine_id or ""].append(task)
        for machine_id in sorted(set(by_machine) | set(machines)):
            machine = machines.get(machine_id)
            existing = by_machine.get(machine_id, [])
            wanted = machine is not None and (
                eligible_for_global(machine, ctx.constraints)
                or (machine_id in held and any(desired_running(t) for t in existing))
            )
            if service.task.binds_to is not None:
                wanted = wanted and machine_id in bound_to
            if wanted and not existing and machine is not None and machine.availability == "pause":
                continue  # a paused machine takes no new tasks
            ctx.reconcile_slot(0, existing, machine_id or None, wanted)
    return Reconciled(ctx.ops, ctx.wake_at)


def _on_lost_machine(task: Task, machines: Mapping[str, Machine]) -> bool:
    """A task on a machine that is down or gone will never report: it no longer holds up a removal."""
    if task.machine_id is None:
        return False
    machine = machines.get(task.machine_id)
    return machine is None or machine.agent is None or agent_down(machine)
