"""The orchestrator component: keeps every service's tasks as `core.tasks.orchestrate.reconcile` decides.

It reconciles a service when something that matters to it changes: the service itself, one of its tasks
ending or finishing, a machine it has tasks on (down, drained, relabelled), any machine for global
services, or a restart delay running out. Status updates in between (ACCEPTED ... RUNNING) do not
wake it. A service's plan is committed in transactions of at most `commits.chunk_size` writes (5,000,
more in a cluster of over 125 agents; creations up to `commits.creation_chunk_size` after the first
chunk), as SwarmKit's orchestrator batches its writes: a service of 100,000 replicas reaches the
allocator, the scheduler and the agents a chunk at a time instead of after one 100,000-task
transaction. The plan itself is made a step of 5,000 slots at a time (`reconcile_in_steps`), each
chunk committed as soon as it is full, with the loop let run between steps: deciding a million slots
at once held the manager's loop for 4 s, changes or not. A chunk that loses a race stops the rest; the
service is reconciled again from the new state (which creates only the slots still missing).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from treeherd.core.tasks.machine_problems import agent_down
from treeherd.core.tasks.node_loss import LossBrake, node_loss_brake
from treeherd.core.tasks.orchestrate import Reconciled, finished, reconcile_in_steps
from treeherd.core.tasks.rollout import ACTIVE
from treeherd.core.tasks.services import rollback_refusal
from treeherd.core.view import View
from treeherd.manager.commits import RETRY_S, RefusedChunk, chunk_size, commit_steps, creation_chunk_size
from treeherd.manager.reactor import Reactor
from treeherd.model.discovery import Endpoint
from treeherd.model.events import Change
from treeherd.model.objects import Machine, TreeNode
from treeherd.model.ops import Op
from treeherd.model.services import ClusterSettings, Service, Task
from treeherd.model.states import TaskState
from treeherd.runtime import new_id, utc_now
from treeherd.store.base import Store

log = logging.getLogger(__name__)


class Orchestrator(Reactor):
    name = "orchestrator"

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        ids: Callable[[], str] = new_id,
        debounce_s: float = 0.05,
    ) -> None:
        super().__init__(store, debounce_s=debounce_s, clock=clock)
        self._ids = ids
        self._dirty: set[str] = set()
        self._wakes: dict[str, datetime] = {}
        self._machines: dict[str, tuple[object, ...]] = {}
        # When machines went down (as this component saw them go), for the brake on mass node loss.
        self._losses: deque[datetime] = deque()
        # service name -> ids of the sidekick services bound to it (`binds_to`)
        self._sidekicks: dict[str, set[str]] = {}
        self._brake = LossBrake()

    def start(self) -> None:
        view = self.store.view()
        self._dirty = {s.id for s in view.all(Service)}
        self._index_sidekicks(view)
        self._machines = {m.id: _placement_facts(m) for m in view.all(Machine)}

    def handle(self, change: Change) -> None:
        view = self.store.view()
        for event in change.events:
            obj = event.object
            if isinstance(obj, Service):
                if event.type != "deleted":
                    self._dirty.add(obj.id)
                self._index_sidekicks(view)
            elif isinstance(obj, Task):
                if event.type == "updated" and (_matters(obj) or _in_update(view, obj)):
                    self._dirty.add(obj.service_id)
                # A sidekick follows every move of the tasks it is bound to (placed, ended, stopped).
                self._dirty.update(self._sidekicks.get(obj.service_name, ()))
            elif isinstance(obj, Machine):
                # Most machine events are heartbeat-level news (an agent registering, its address):
                # only what decides where tasks may run wakes the services concerned.
                facts = None if event.type == "deleted" else _placement_facts(obj)
                if self._machines.get(obj.id) == facts:
                    continue
                before = self._machines.get(obj.id)
                if facts is None:
                    self._machines.pop(obj.id, None)
                else:
                    self._machines[obj.id] = facts
                    if facts[0] and before is not None and not before[0]:
                        self._losses.append(self.clock())
                self._dirty.update(t.service_id for t in view.referrers(Task, "machine", obj.id))
                self._dirty.update(
                    s.id for s in view.all(Service) if s.mode == "global" or s.task.binds_to is not None
                )

    async def act(self) -> None:
        now = self.clock()
        for service_id, when in list(self._wakes.items()):
            if when <= now:
                self._dirty.add(service_id)
                del self._wakes[service_id]
        # The brake's recheck time: held machines are released then, with no other change to wake us.
        brake_due = self._brake.recheck_at is not None and self._brake.recheck_at <= now
        if not self._dirty and not brake_due:
            self._schedule_wake()
            return
        view = self.store.view()
        settings = view.lookup(ClusterSettings, "name", "default") or ClusterSettings(
            id="", created_at=now, updated_at=now
        )
        machines = {m.id: m for m in view.all(Machine)}
        self._apply_brake(machines, settings, now)
        if not self._dirty:
            self._schedule_wake()
            return
        dirty, self._dirty = self._dirty, set()
        for service_id in sorted(dirty):
            service = view.get(Service, service_id)
            if service is None:
                continue
            tasks = view.referrers(Task, "service", service_id)
            node = view.get(TreeNode, service.node_id)
            steps = reconcile_in_steps(
                service,
                tasks,
                machines,
                now,
                self._ids,
                history=settings.task_history,
                node_path=node.path if node is not None else "",
                held=frozenset(self._brake.held),  # as it is now: the steps span the commits
                bound_to=_bound_machines(view, service),
                endpoints=_registrations(view, service),
                drain_s=settings.drain_delay_s,
                rollback_refused=rollback_refusal(view, service),
            )
            # Decided a step at a time and committed as the chunks fill up: a service of a million
            # slots neither holds the loop for seconds nor waits for its whole plan.
            committed = await commit_steps(
                self.store,
                self._ops(service_id, steps),
                f"reconcile of service {service.name}",
                size=chunk_size(view),
                creations=creation_chunk_size(view),
                on_refused_chunk=RefusedChunk.STOP,
            )
            if not committed:
                self._wakes[service_id] = now + timedelta(seconds=RETRY_S)
            view = self.store.view()
        self._schedule_wake()

    def _ops(self, service_id: str, steps: Iterator[Reconciled]) -> Iterator[list[Op]]:
        """Each step's writes; once all are taken, when to look at the service again (the last
        step's)."""
        wake_at = None
        for step in steps:
            wake_at = step.wake_at
            yield step.ops
        if wake_at is not None:
            self._wakes[service_id] = wake_at

    def _apply_brake(self, machines: dict[str, Machine], settings: ClusterSettings, now: datetime) -> None:
        """Work out which down machines keep their tasks for now; wake the services of those released."""
        hold_s = settings.node_loss_hold_s
        while self._losses and self._losses[0] <= now - timedelta(seconds=hold_s):
            self._losses.popleft()
        down_since = {
            m.id: m.agent.since or now for m in machines.values() if m.agent is not None and agent_down(m)
        }
        agents = sum(1 for m in machines.values() if m.agent is not None)
        brake = node_loss_brake(
            down_since,
            self._losses,
            agents,
            now,
            fraction=settings.node_loss_fraction,
            hold_s=hold_s,
        )
        if brake.reason and not self._brake.reason:
            log.warning("mass node loss: %s", brake.reason)
        elif self._brake.reason and not brake.reason:
            log.warning("mass node loss over: tasks of down machines are replaced again")
        view = self.store.view()
        for machine_id in self._brake.held - brake.held:
            self._dirty.update(t.service_id for t in view.referrers(Task, "machine", machine_id))
        self._brake = brake

    def _index_sidekicks(self, view: View) -> None:
        self._sidekicks = {}
        for service in view.all(Service):
            if service.task.binds_to is not None:
                self._sidekicks.setdefault(service.task.binds_to, set()).add(service.id)

    def _schedule_wake(self) -> None:
        wakes = list(self._wakes.values())
        if self._brake.recheck_at is not None:
            wakes.append(self._brake.recheck_at)
        self.wake_at = min(wakes) if wakes else None


def _placement_facts(machine: Machine) -> tuple[object, ...]:
    """What about a machine the orchestrator's decisions depend on (down or not, not its exact state)."""
    down = machine.agent is None or agent_down(machine)
    labels = tuple(sorted(machine.labels.items()))
    return (down, machine.availability, machine.role, machine.machine_kind, machine.hostname, labels)


def _matters(task: Task) -> bool:
    """A task change the orchestrator must react to: it ended while meant to run, or it is done."""
    if task.desired_state <= TaskState.RUNNING:
        return task.status.state.terminal
    return finished(task)


def _registrations(view: View, service: Service) -> dict[str, list[Endpoint]]:
    """The service's task registrations by task id (an updated task is drained from them first)."""
    found: dict[str, list[Endpoint]] = {}
    for endpoint in view.where(Endpoint, "service", service.name):
        if endpoint.task_id is not None:
            found.setdefault(endpoint.task_id, []).append(endpoint)
    return found


def _in_update(view: View, task: Task) -> bool:
    """A task of a service under update: the updater follows every step of its new tasks."""
    service = view.get(Service, task.service_id)
    return service is not None and service.update_status is not None and service.update_status.state in ACTIVE


def _bound_machines(view: View, service: Service) -> frozenset[str]:
    """For a sidekick: the machines that run a live task of the service it is bound to."""
    if service.task.binds_to is None:
        return frozenset()
    target = view.lookup(Service, "name", service.task.binds_to)
    if target is None:
        return frozenset()
    return frozenset(
        t.machine_id
        for t in view.referrers(Task, "service", target.id)
        if t.machine_id is not None and t.desired_state <= TaskState.RUNNING and not t.status.state.terminal
    )
