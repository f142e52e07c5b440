"""The scheduler's decision: which machine each pending task goes to, or why none can take it.

`schedule(node_set, tasks, services)` is pure: it reads the NodeSet and the tasks, counts each decision
in the NodeSet at once (so later tasks of the batch see it), and returns `Decisions` for the shell to
commit in one transaction. The shell drops decisions whose task or machine changed meanwhile (each
Assignment carries both versions) and calls `node_set.release(task_id)` for every decision it drops.

How a batch is placed:
- Tasks already bound to a machine (a global service's) are checked against every filter on that
  machine and placed there, or explained ("machine web-3: not ready (down)"). They go first: they have
  no other choice.
- The rest are grouped by (service id, spec version): one spec, one set of filters. Groups are ordered
  so a service comes before the services that name it in MachineOf, then by name.
- Per group, candidates come from two heaps. The batch's *lane* for the group's constraints holds the
  nodes passing the node-only filters (ready, availability, constraints: evaluated once per batch per
  set of constraints), least loaded first: (tasks in total, machine id). The group's *busy* heap holds
  the nodes already running the service: (tasks of this service, tasks in total, machine id). That last
  key is SwarmKit's spread, deterministic on ties; a node without the service always ranks before one
  with it, so each task takes the least loaded lane node free of the service that passes the group's
  other filters, and the top of the busy heap only once no such node is left. A node that took a task
  moves to the busy heap; only its dynamic filters (resources, max_per_node, a service conflicting with
  itself) are checked again. M tasks of a service already on S nodes cost O((M + S + R) log N), R being
  the lane nodes rejected on the way, plus O(N) per batch per distinct set of constraints: a big service
  costs O(N + M log N), and a thousand small ones do not cost a thousand passes over every node.
- When a group runs out of nodes, its remaining tasks share one explanation, counted over all nodes
  after the group's own placements ("no node satisfies node.labels.disk==ssd; insufficient memory on 3
  nodes"). A later group of the same shape (same constraints and reservations, and no MachineOf,
  Conflicts or max_per_node) is unplaced at once: loads only grow during a batch. This keeps a full
  cluster with thousands of pending services from costing a pass over every node per service.

Each pending task given is first released from the NodeSet: an earlier, uncommitted decision for it is
superseded by this batch's (and loads only grow while a batch is placed, which the lanes rely on).

Tasks that must not be placed at all (not PENDING, or desired state past RUNNING) are reported in
`skipped` with the reason, never in `unplaced`: the shell should not write a placement error on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from heapq import heapify, heappop, heappush, heapreplace
from operator import attrgetter

import msgspec

from treeherd.core.tasks.scheduling.filters import Filter, explain_group, explain_node, filters_for
from treeherd.core.tasks.scheduling.nodeinfo import Demand, NodeInfo, NodeSet
from treeherd.model.errors import InvalidInput
from treeherd.model.services import Service, Task
from treeherd.model.states import TaskState

__all__ = ["Assignment", "Decisions", "schedule"]

_by_slot = attrgetter("slot")
GroupKey = tuple[str, int]  # (service id, spec version)
_LaneEntry = tuple[int, str, NodeInfo]  # (active tasks when pushed, machine id, node)
_Shape = tuple[tuple[str, ...], float, int]  # (constraints, reserved cpus, reserved memory)


class Assignment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Put task `task_id` on machine `machine_id`; decided from these versions of both."""

    task_id: str
    machine_id: str
    task_version: int
    machine_version: int


class Decisions(msgspec.Struct, kw_only=True):
    """What one `schedule` call decided. Every task given is in exactly one of the three."""

    assigned: list[Assignment] = msgspec.field(default_factory=list)
    # task id -> why no machine can take it now (for the task's placement_error).
    unplaced: dict[str, str] = msgspec.field(default_factory=dict)
    # task id -> why it was not a candidate at all (a shell bug or a stale read: leave the task alone).
    skipped: dict[str, str] = msgspec.field(default_factory=dict)


def schedule(node_set: NodeSet, tasks: Iterable[Task], services: Mapping[str, Service]) -> Decisions:
    """Place pending tasks (of any services) on the nodes of `node_set`; see the module docstring."""
    decisions = Decisions()
    pinned: list[Task] = []
    groups: dict[GroupKey, list[Task]] = {}
    for task in tasks:
        if task.status.state != TaskState.PENDING:
            decisions.skipped[task.id] = f"not pending (state {task.status.state.label})"
        elif task.desired_state > TaskState.RUNNING:
            decisions.skipped[task.id] = f"desired state is {task.desired_state.label}"
        else:
            node_set.release(task.id)
            if task.machine_id is not None:
                pinned.append(task)
            else:
                groups.setdefault((task.service_id, task.spec_version), []).append(task)
    batch = _Batch(node_set, services, decisions)
    for task in pinned:
        batch.place_pinned(task)
    for key in _group_order(groups):
        batch.place_group(groups[key])
    return decisions


def _group_order(groups: Mapping[GroupKey, list[Task]]) -> list[GroupKey]:
    """Targets of MachineOf before the services that follow them, then by service name: deterministic."""
    target_of: dict[str, str] = {}
    for tasks in groups.values():
        first = tasks[0]
        if first.spec.placement.machine_of is not None:
            target_of[first.service_name] = first.spec.placement.machine_of

    def depth(name: str) -> int:
        seen = {name}
        while (name := target_of.get(name, "")) and name not in seen:
            seen.add(name)
        return len(seen) - 1

    return sorted(
        groups, key=lambda key: (depth(groups[key][0].service_name), groups[key][0].service_name, key)
    )


class _Batch:
    """The state of one `schedule` call: filters and node-only results shared between groups."""

    def __init__(self, node_set: NodeSet, services: Mapping[str, Service], decisions: Decisions) -> None:
        self.node_set = node_set
        self.services = services
        self.decisions = decisions
        self.nodes = node_set.nodes()
        # Per set of constraints, the nodes passing the node-only filters, least loaded first.
        self._lanes: dict[tuple[str, ...], list[_LaneEntry]] = {}
        # Groups that ran out of nodes, by shape: (placements so far then, their explanation). Loads
        # only grow during a batch, so a later group of the same shape has no node either.
        self._hopeless: dict[_Shape, tuple[int, str]] = {}
        self._placements = 0
        # Filters of the pinned tasks' specs: a global service has one task per machine.
        self._pinned_filters: dict[GroupKey, list[Filter] | str] = {}

    def _unplace(self, tasks: Iterable[Task], explanation: str) -> None:
        unplaced = self.decisions.unplaced
        for task in tasks:
            unplaced[task.id] = explanation

    def _filters(self, task: Task, service: Service) -> list[Filter] | str:
        """The group's filters, or the explanation of why its spec cannot be placed anywhere."""
        try:
            return filters_for(self.node_set, task, service)
        except InvalidInput as error:
            return error.detail

    def _service(self, task: Task) -> Service | str:
        service = self.services.get(task.service_id)
        if service is None:
            return f"service {task.service_name} ({task.service_id}) no longer exists"
        return service

    def _assign(self, task: Task, node: NodeInfo, demand: Demand) -> None:
        self._placements += 1
        self.node_set.assign(task.id, node, demand)
        self.decisions.assigned.append(
            Assignment(
                task_id=task.id, machine_id=node.id, task_version=task.version, machine_version=node.version
            )
        )

    def place_pinned(self, task: Task) -> None:
        """A task already bound to its machine: place it there if that machine passes every filter."""
        service = self._service(task)
        if isinstance(service, str):
            self._unplace([task], service)
            return
        key = (task.service_id, task.spec_version)
        filters = self._pinned_filters.get(key)
        if filters is None:
            filters = self._pinned_filters[key] = self._filters(task, service)
        if isinstance(filters, str):
            self._unplace([task], filters)
            return
        node = self.node_set.get(task.machine_id or "")
        if node is None:
            self._unplace([task], f"machine {task.machine_id} is not in the cluster")
            return
        explanation = explain_node(filters, node, task, service)
        if explanation:
            self._unplace([task], explanation)
        else:
            self._assign(task, node, Demand.of(task))

    def _lane(self, task: Task, service: Service, filters: list[Filter]) -> list[_LaneEntry]:
        """The batch's heap of nodes passing the node-only filters of these constraints, by load."""
        constraints = tuple(task.spec.placement.constraints)
        lane = self._lanes.get(constraints)
        if lane is None:
            node_only = [f for f in filters if f.node_only]
            lane = [
                (node.active_tasks, node.id, node)
                for node in self.nodes
                if all(f.check(node, task, service) for f in node_only)
            ]
            heapify(lane)
            self._lanes[constraints] = lane
        return lane

    def place_group(self, tasks: list[Task]) -> None:
        """Tasks of one service spec version, spread over the nodes that pass the filters."""
        first = tasks[0]
        service = self._service(first)
        if isinstance(service, str):
            self._unplace(tasks, service)
            return
        filters = self._filters(first, service)
        if isinstance(filters, str):
            self._unplace(tasks, filters)
            return
        shape = _shape(first, filters)
        if shape is not None and shape in self._hopeless:
            self._unplace(tasks, self._explain_hopeless(shape, filters, first, service))
            return
        service_id = first.service_id
        lane = self._lane(first, service, filters)
        others = [f for f in filters if not f.node_only]
        dynamic = [f for f in filters if f.dynamic]
        # Nodes already running the service, ranked by (its tasks there, all tasks there, id).
        busy = [
            (node.tasks_by_service[service_id], node.active_tasks, node.id, node)
            for node in self.node_set.running(service_id)
            if all(f.check(node, first, service) for f in filters)
        ]
        heapify(busy)
        taken: list[NodeInfo] = []  # nodes popped off the lane, put back when the group is done
        demand = Demand.of(first)
        assign = self._assign
        tasks.sort(key=_by_slot)
        placed = 0
        free_left = True  # until the lane has no node free of this service that passes
        for task in tasks:
            node = _next_free(lane, taken, service_id, others, first, service) if free_left else None
            if node is not None:
                assign(task, node, demand)
                if _passes(dynamic, node, task, service):
                    heappush(busy, (1, node.active_tasks, node.id, node))
            elif busy:
                free_left = False
                node = busy[0][3]
                assign(task, node, demand)
                if _passes(dynamic, node, task, service):
                    heapreplace(busy, (node.tasks_by_service[service_id], node.active_tasks, node.id, node))
                else:
                    heappop(busy)
            else:
                break
            placed += 1
        for node in taken:
            heappush(lane, (node.active_tasks, node.id, node))
        if placed < len(tasks):
            explanation = explain_group(filters, self.nodes, first, service)
            if shape is not None:
                self._hopeless[shape] = (self._placements, explanation)
            self._unplace(tasks[placed:], explanation)

    def _explain_hopeless(self, shape: _Shape, filters: list[Filter], task: Task, service: Service) -> str:
        """The explanation for a group shaped like one that already ran out of nodes in this batch,
        counted again only if something was placed since (it can only have got tighter)."""
        placements, explanation = self._hopeless[shape]
        if placements != self._placements:
            explanation = explain_group(filters, self.nodes, task, service)
            self._hopeless[shape] = (self._placements, explanation)
        return explanation


def _shape(task: Task, filters: list[Filter]) -> _Shape | None:
    """What decides where a group fits, when that is its constraints and reservations alone (no filter
    depends on which services run where); None otherwise."""
    if any(f.service_specific for f in filters):
        return None
    resources = task.spec.resources
    return (tuple(task.spec.placement.constraints), resources.reserve_cpus, resources.reserve_memory)


def _passes(filters: list[Filter], node: NodeInfo, task: Task, service: Service) -> bool:
    """Whether the node passes every filter (a plain loop: cheaper than all() over a generator)."""
    for f in filters:  # noqa: SIM110 (hot path)
        if not f.check(node, task, service):
            return False
    return True


def _next_free(
    lane: list[_LaneEntry],
    taken: list[NodeInfo],
    service_id: str,
    others: list[Filter],
    task: Task,
    service: Service,
) -> NodeInfo | None:
    """The least loaded node of the lane with no task of the service that passes the other filters.

    Entries are popped into `taken`. An entry whose load changed since it was pushed (the node took a
    task in another group) is pushed back with its current load: loads only grow during a batch, so a
    stale entry surfaces early, never late."""
    while lane:
        load, _, node = heappop(lane)
        if load != node.active_tasks:
            heappush(lane, (node.active_tasks, node.id, node))
            continue
        taken.append(node)
        if service_id not in node.tasks_by_service and _passes(others, node, task, service):
            return node
    return None
