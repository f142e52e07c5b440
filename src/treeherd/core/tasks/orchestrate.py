"""The orchestrator's decision: given a service, its tasks and the machines, what to create, stop, delete.

Replicated services have slots 1..replicas; global services one task per eligible machine. In each slot
(or on each machine) at most one task is meant to run (desired state RUNNING). A task that must stop is
given desired state SHUTDOWN (the agent stops it; only the agent reports it stopped), and a replacement is
created when the reason calls for one:
- the task ended (observed terminal): per the restart policy (condition, max attempts in a window, delay);
- its machine went down (unless the brake on mass node loss holds it, `core.tasks.node_loss`), was drained,
  was removed, or no longer satisfies the constraints (the typed reasons of `core.tasks.machine_problems`):
  always (unless the restart condition is `none` and the machine went down);
- the service's spec changed (an update never changes a running task: it replaces it), in the slots
  and the order the updater (`core.tasks.rollout`) picks; an outdated task waits its turn, and with
  start-first it runs beside its replacement until that one is ready.
  While a canary runs, a slot outside it that needs a new task (a restart, a new slot) gets one of the
  previous spec: the canary stays the size it was given.
A running task that is an endpoint and is retired (outdated, in a slot scaled away, or of a removed
service) is drained first: its registrations go (the proxies stop sending it requests), and it is told
to stop `drain_s` later (the cluster's `drain_delay_s`), with its stop grace period for the requests in
flight.
A slot that never had a task gets a new one, and so does one whose last task the manager stopped (a
slot scaled away and wanted again); a slot whose last task ended without a restart stays empty.
Finished tasks beyond the history limit are deleted, oldest first. A removed service stops every task,
then is deleted with them once none is left running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta

import msgspec

from treeherd.core.tasks.allocate import creation_allocation
from treeherd.core.tasks.machine_problems import ProblemKind, agent_down, machine_problem
from treeherd.core.tasks.rollout import ACTIVE, canary_slots, ready, stale_versions
from treeherd.core.tasks.rollout import step as rollout_step
from treeherd.core.tasks.scheduling.constraints import parse_constraint
from treeherd.core.tasks.slots import Slot, service_slots
from treeherd.core.tasks.slots import desired_running as desired_running
from treeherd.model.discovery import Endpoint
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Delete, Op, Update
from treeherd.model.services import RestartPolicy, Service, Task, TaskStatus, UpdateOrder
from treeherd.model.states import TaskState

# Slots per step of `reconcile_in_steps`: some 0.4 ms of work when the slots are as they should be,
# far more when their tasks need replacing (nodes lost: steps of 5,000 such slots held a manager's
# loop for seconds at 1,000,000 tasks). The shell that runs the steps lets its loop run by time.
STEP = 100
# The default drain (`ClusterSettings.drain_delay_s`): nginx and haproxy take a change within ~50 ms.
DRAIN_S = 1.0


class Reconciled(msgspec.Struct, frozen=True):
    """The operations to commit, and when to look again (a restart delay ends, say)."""

    ops: list[Op]
    wake_at: datetime | None = None


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
        endpoints: Mapping[str, Sequence[Endpoint]],
        drain_s: float,
    ) -> None:
        self.held = held
        self.drain_s = drain_s
        self.endpoints = endpoints
        self.stale: frozenset[int] = frozenset()  # spec versions of outdated tasks
        self.service = service
        self.node_path = node_path
        self.machines = machines
        self.now = now
        self.new_id = new_id
        self.history = max(1, history)
        self.constraints = [parse_constraint(c) for c in service.task.placement.constraints]
        self.ops: list[Op] = []
        self.wake_at: datetime | None = None
        # While a canary runs: its slots (the others keep the previous spec).
        self.canary_slots: frozenset[str] | None = None

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

    def retire(self, task: Task, reason: str) -> bool:
        """Stop a task, taken out of its proxies first when it is a running endpoint: its
        registrations are deleted and it stops `drain_s` later. True once it is told to stop."""
        registered = self.endpoints.get(task.id, ())
        if task.drain_until is None and (not registered or task.status.state != TaskState.RUNNING):
            self.shutdown(task, reason)
            return True
        if task.drain_until is not None and task.drain_until <= self.now:
            self.shutdown(task, reason)
            return True
        self.ops.extend(Delete(e) for e in registered)
        until = task.drain_until
        if until is None:
            until = self.now + timedelta(seconds=self.drain_s)
            self.ops.append(Update(msgspec.structs.replace(task, drain_until=until, updated_at=self.now)))
        self.wake_at = until if self.wake_at is None else min(self.wake_at, until)
        return False

    def create(
        self, slot: int, machine_id: str | None, cause: str, previous: Task | None, restart: bool
    ) -> None:
        policy = self.service.task.restart
        restarts: tuple[datetime, ...] = ()
        restart_at = None
        if previous is not None:
            # The slot's restart record carries over every replacement, so attempts are counted per slot.
            restarts = self.recent_restarts(previous)
        if previous is not None and restart:
            if policy.max_attempts:
                restarts = (*restarts, self.now)[-policy.max_attempts :]
            ended = previous.status.timestamp if previous.status.state.terminal else self.now
            due = ended + timedelta(seconds=policy.delay_s)
            if due > self.now:
                restart_at = due
                self.wake_at = due if self.wake_at is None else min(self.wake_at, due)
        spec, version, older = self.service.task, self.service.spec_version, self.service.previous_task
        if self.canary_slots is not None and str(slot) not in self.canary_slots and older:
            spec, version = older, version - 1  # (the version the previous spec had)
        # Created PENDING when the allocator would have nothing to do (`core.tasks.allocate`).
        allocation = creation_allocation(spec, restart_at, self.now)
        ports, status = allocation or ({}, TaskStatus(state=TaskState.NEW, timestamp=self.now, message=cause))
        task = Task(
            id=self.new_id(),
            created_at=self.now,
            updated_at=self.now,
            service_id=self.service.id,
            service_name=self.service.name,
            node_path=self.node_path,
            slot=slot,
            machine_id=machine_id,
            status=status,
            ports=ports,
            spec=spec,
            spec_version=version,
            cause=cause,
            restart_at=restart_at,
            restarts=restarts,
        )
        self.ops.append(Create(task))

    def recent_restarts(self, previous: Task) -> tuple[datetime, ...]:
        """The slot's restarts within the policy's window (all of them when the window is 0)."""
        window_s = self.service.task.restart.window_s
        if not window_s:
            return previous.restarts
        cutoff = self.now - timedelta(seconds=window_s)
        return tuple(t for t in previous.restarts if t > cutoff)

    def attempts_left(self, previous: Task) -> bool:
        max_attempts = self.service.task.restart.max_attempts
        return not max_attempts or len(self.recent_restarts(previous)) < max_attempts

    def collect_history(self, tasks: Sequence[Task], keep_ids: set[str]) -> None:
        done = sorted((t for t in tasks if finished(t) and t.id not in keep_ids), key=lambda t: t.created_at)
        for task in done[: max(0, len(done) - self.history)]:
            self.ops.append(Delete(task))

    def update_slot(
        self,
        slot: int,
        machine_id: str | None,
        update: UpdateOrder | None,
        keep: Task | None,
        old: list[Task],
        draining: list[Task],
    ) -> None:
        """A slot with outdated tasks (`old`) or tasks being drained: replaced as `update` says."""
        for extra in old[:-1]:
            self.shutdown(extra, "a newer task runs in this slot")
        previous = old[-1] if old else None
        # A drain once begun is seen through, even if the update paused meanwhile.
        drained = [self.retire(t, "the service was updated") for t in draining]
        version = self.service.spec_version
        if previous is not None:
            cause = f"update of {previous.id} to spec {version}"
            if keep is not None and ready(keep):
                self.retire(previous, f"replaced by {keep.id} (spec {version})")
            elif update == "stop-first":
                if self.retire(previous, "the service was updated") and keep is None and not draining:
                    self.create(slot, machine_id, cause, previous, False)
            elif update == "start-first" and keep is None:
                self.create(slot, machine_id, cause, previous, False)
            # Otherwise the outdated task serves on: no update reaches this slot now, and a failed
            # task of the new spec is not restarted beside it.
        elif keep is None and all(drained):
            self.create(
                slot, machine_id, f"update of {draining[-1].id} to spec {version}", draining[-1], False
            )

    def reconcile_slot(
        self,
        slot: int,
        tasks: Sequence[Task],
        machine_id: str | None,
        wanted: bool,
        update: UpdateOrder | None = None,
    ) -> None:
        """One slot (or one global machine): at most one task meant to run, replaced as needed, but
        for an outdated task beside its start-first replacement. `update` says how to replace an
        outdated task (the updater's choice); without it the outdated task stays for now."""
        ordered = sorted(tasks, key=lambda t: t.created_at)
        live = [t for t in ordered if desired_running(t)]
        if not wanted:
            for task in live:
                self.retire(task, "not wanted here any more")
            self.collect_history(ordered, set())
            return
        keep: Task | None = None
        old: list[Task] = []
        draining: list[Task] = []
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
            elif task.drain_until is not None:
                draining.append(task)  # on its way out, whatever its spec
            elif task.spec_version in self.stale:
                old.append(task)
            elif keep is not None:
                self.shutdown(keep, "a newer task runs in this slot")
                keep = task
            else:
                keep = task
        if old or draining:
            if draining or update is not None or keep is not None or len(old) > 1:
                self.update_slot(slot, machine_id, update, keep, old, draining)
            kept = {old[-1].id} if old else set()
            kept.update(t.id for t in draining)
            if keep is not None:
                kept.add(keep.id)
            self.collect_history(ordered, kept)
            return
        if keep is None:
            if replace is not None:
                previous_task, cause, restart = replace
                self.create(slot, machine_id, cause, previous_task, restart)
            elif not ordered:
                self.create(
                    slot, machine_id, "new slot" if machine_id is None else "new machine", None, False
                )
            elif _stopped_by_manager(ordered[-1]):
                # Scaled away (or its machine left a global service) and wanted again.
                self.create(slot, machine_id, "slot wanted again", ordered[-1], False)
        self.collect_history(ordered, {keep.id} if keep else set())


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
    endpoints: Mapping[str, Sequence[Endpoint]] | None = None,
    drain_s: float = DRAIN_S,
    rollback_refused: str | None = None,
) -> Reconciled:
    """What the service's tasks should become; see the module docstring for the rules.
    `node_path` is the tree path of the service's node, recorded in the tasks it creates; `held` are
    down machines whose tasks are not replaced yet (`core.tasks.node_loss`; every down machine for a
    service with `on_node_down="wait"`); `bound_to`, for a sidekick
    (`binds_to`), the machines that run a live task of the service it is bound to; `endpoints`, the
    service's registrations by task id (a retired task that is one is drained for `drain_s` before it
    stops); `rollback_refused`, why an automatic rollback would be refused (`core.tasks.rollout.step`)."""
    ops: list[Op] = []
    wake_at: datetime | None = None
    for step in reconcile_in_steps(
        service,
        tasks,
        machines,
        now,
        new_id,
        history=history,
        node_path=node_path,
        held=held,
        bound_to=bound_to,
        endpoints=endpoints,
        drain_s=drain_s,
        rollback_refused=rollback_refused,
    ):
        ops.extend(step.ops)
        wake_at = step.wake_at
    return Reconciled(ops, wake_at)


def reconcile_in_steps(
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
    endpoints: Mapping[str, Sequence[Endpoint]] | None = None,
    drain_s: float = DRAIN_S,
    rollback_refused: str | None = None,
    step: int = STEP,
) -> Iterator[Reconciled]:
    """`reconcile`, a step of at most `step` slots at a time: each step's ops (possibly none) in the
    order `reconcile` lists them, and when to look again as far as known (the last step's is the
    answer). Every step decides from the arguments as they were at the start, so a caller that lets
    its loop run between steps, and commits the ops meanwhile, commits what one call would have
    decided: at 1,000,000 slots that call held the loop for 4 s, whether or not it changed anything."""
    if service.on_node_down == "wait":
        held = {*held, *(m.id for m in machines.values() if agent_down(m))}
    ctx = _Context(service, machines, now, new_id, history, node_path, held, endpoints or {}, drain_s)
    if service.removing:
        live = [t for t in tasks if desired_running(t)]
        for task in live:
            ctx.retire(task, "the service was removed")
        if not live and all(finished(t) or _on_lost_machine(t, machines) for t in tasks):
            ctx.ops.extend(Delete(t) for t in tasks)
            ctx.ops.append(Delete(service))
        yield Reconciled(ctx.ops, ctx.wake_at)
        return
    slots: Iterable[Slot] = service_slots(service, tasks, machines, ctx.constraints, held, bound_to)
    replace: AbstractSet[str] = frozenset()
    if _rollout_due(service, tasks):
        slots = list(slots)  # (otherwise made one at a time: 100,000 kept tuples cost the GC's time)
        wanted = {key: slot_tasks for key, _, slot_tasks, _, is_wanted in slots if is_wanted}
        rollout = rollout_step(service, wanted, now, rollback_refused)
        replace = rollout.replace
        if rollout.service is not service:
            ctx.service = rollout.service
            ctx.constraints = [parse_constraint(c) for c in rollout.service.task.placement.constraints]
            ctx.ops.append(Update(rollout.service))
        if rollout.wake_at is not None:
            ctx.wake_at = rollout.wake_at
    ctx.stale = stale_versions(ctx.service, tasks)
    ctx.canary_slots = canary_slots(ctx.service)
    status = ctx.service.update_status
    rolling_back = status is not None and status.state.startswith("rollback")
    policy = ctx.service.rollback if rolling_back else ctx.service.update
    step = max(1, step)
    for walked, (key, slot, slot_tasks, machine_id, is_wanted) in enumerate(slots, 1):
        mode = policy.order if key in replace else None
        ctx.reconcile_slot(slot, slot_tasks, machine_id, is_wanted, mode)
        if walked % step == 0:
            yield Reconciled(ctx.ops, ctx.wake_at)
            ctx.ops = []
    yield Reconciled(ctx.ops, ctx.wake_at)


# A slot: its key (replicated: the slot number; global: the machine id), slot number, tasks, machine
# (global), and whether it is wanted.
def _rollout_due(service: Service, tasks: Sequence[Task]) -> bool:
    """Whether the updater has anything to decide: an update under way, or (none on record) a task of
    another spec version. Without either, every task is of the current spec or waits for an update."""
    status = service.update_status
    if status is not None:
        return status.state in ACTIVE
    version = service.spec_version
    return any(t.spec_version != version for t in tasks)


def _stopped_by_manager(task: Task) -> bool:
    """A task the manager told to stop and that did (one that ended on its own is not SHUTDOWN)."""
    return not desired_running(task) and task.status.state == TaskState.SHUTDOWN


def _on_lost_machine(task: Task, machines: Mapping[str, Machine]) -> bool:
    """A task on a machine that is down or gone will never report: it no longer holds up a removal."""
    if task.machine_id is None:
        return False
    machine = machines.get(task.machine_id)
    return machine is None or machine.agent is None or agent_down(machine)
