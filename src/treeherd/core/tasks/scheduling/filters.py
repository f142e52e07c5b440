"""Feasibility filters: can this node take one more task of this service spec? And why not.

Each filter is built for one group (a service's spec version) by `filters_for` and answers
`check(node, task, service)`. It explains itself in two ways: `explain(failed, total)` is the fragment
for the nodes it rejected ("insufficient memory on 3 nodes"), `reason(node)` why it rejects one node
(for a global task pinned to its machine). `explain_group` joins the fragments of every filter, most
failures first, as SwarmKit's pipeline does; unlike SwarmKit it counts every filter a node fails, not
only the first, so "no node satisfies node.labels.disk==ssd" is true even when some nodes are also down.

Flags the scheduler relies on:
- `node_only`: the answer depends on the machine alone (readiness, availability, constraints), so one
  evaluation serves every group with the same constraints in a batch;
- `dynamic`: placing a task of this very group can turn the answer from yes to no (resources,
  max_per_node, a service that conflicts with itself). Answers only ever go from yes to no as a group's
  tasks are placed, never back, so a node dropped from the candidates never needs a second look;
- `service_specific`: the answer depends on which services run where (MachineOf, Conflicts,
  max_per_node), not only on the machine and the spec's constraints and reservations. Groups with none
  of these and the same constraints and reservations pass or fail on exactly the same nodes.

Resources: a machine reporting 0 CPUs (or 0 memory) offers none. A task that reserves CPUs (memory) is
not placed there, with its own explanation ("2 nodes report no memory"), and a task that reserves
nothing fits anywhere. This never over-commits a machine whose capacity is not known yet.
"""

from __future__ import annotations

from collections.abc import Sequence

from treeherd.core.tasks.scheduling.constraints import Constraint, parse_constraint
from treeherd.core.tasks.scheduling.nodeinfo import NANO, NodeInfo, NodeSet, nano_cpus
from treeherd.model.services import Service, Task

__all__ = [
    "AvailabilityFilter",
    "ConflictsFilter",
    "ConstraintFilter",
    "CpuFilter",
    "Filter",
    "MachineOfFilter",
    "MaxPerNodeFilter",
    "MemoryFilter",
    "ReadyFilter",
    "UnknownCapacityFilter",
    "explain_group",
    "explain_node",
    "filters_for",
    "plural",
]


def plural(count: int) -> str:
    """'1 node', '3 nodes'."""
    return f"{count} node" if count == 1 else f"{count} nodes"


class Filter:
    """One feasibility check, bound to a group's spec when built."""

    node_only = False
    dynamic = False
    service_specific = False

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        raise NotImplementedError

    def explain(self, failed: int, total: int) -> str:
        """The fragment for `failed` rejected nodes out of `total`."""
        raise NotImplementedError

    def reason(self, node: NodeInfo) -> str:
        """Why this one node is rejected."""
        raise NotImplementedError


class ReadyFilter(Filter):
    """The machine's agent is connected and ready."""

    node_only = True

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        machine = node.machine
        return machine is not None and machine.agent is not None and machine.agent.state == "ready"

    def explain(self, failed: int, total: int) -> str:
        return f"{plural(failed)} not ready"

    def reason(self, node: NodeInfo) -> str:
        machine = node.machine
        state = machine.agent.state if machine is not None and machine.agent is not None else "no agent"
        return f"not ready ({state})"


class AvailabilityFilter(Filter):
    """The machine takes new tasks: availability `active` (pause and drain take none)."""

    node_only = True

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        return node.machine is not None and node.machine.availability == "active"

    def explain(self, failed: int, total: int) -> str:
        return f"{plural(failed)} paused or drained"

    def reason(self, node: NodeInfo) -> str:
        availability = node.machine.availability if node.machine is not None else "unknown"
        return f"availability is {availability}"


class ConstraintFilter(Filter):
    """One placement constraint."""

    node_only = True

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        return node.machine is not None and self.constraint.matches(node.machine)

    def explain(self, failed: int, total: int) -> str:
        if failed >= total:
            return f"no node satisfies {self.constraint}"
        return f"{self.constraint} not satisfied on {plural(failed)}"

    def reason(self, node: NodeInfo) -> str:
        return f"does not satisfy {self.constraint}"


class MachineOfFilter(Filter):
    """MachineOf: only beside an active task of the named service."""

    service_specific = True

    def __init__(self, target: str) -> None:
        self.target = target

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        return self.target in node.tasks_by_name

    def explain(self, failed: int, total: int) -> str:
        if failed >= total:
            return f"no node runs {self.target} (machine_of)"
        return f"{self.target} not running on {plural(failed)} (machine_of)"

    def reason(self, node: NodeInfo) -> str:
        return f"does not run {self.target} (machine_of)"


class ConflictsFilter(Filter):
    """Conflicts, both ways: not beside a service this one names, nor beside one that names this one."""

    service_specific = True

    def __init__(self, service_name: str, conflicts: Sequence[str]) -> None:
        self.service_name = service_name
        self.conflicts = tuple(conflicts)
        self.dynamic = service_name in self.conflicts

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        if self.service_name in node.conflicts_declared:
            return False
        running = node.tasks_by_name
        return not any(name in running for name in self.conflicts)

    def explain(self, failed: int, total: int) -> str:
        named = f" (conflicts: {', '.join(self.conflicts)})" if self.conflicts else ""
        return f"conflicting services on {plural(failed)}{named}"

    def reason(self, node: NodeInfo) -> str:
        found = [name for name in self.conflicts if name in node.tasks_by_name]
        if self.service_name in node.conflicts_declared:
            found.append(f"a service that conflicts with {self.service_name}")
        return f"runs conflicting services: {', '.join(found)}"


class UnknownCapacityFilter(Filter):
    """The machine reports the capacity a reservation is counted against (0 means not reported).

    Not `node_only`: whether the filter applies depends on the group's reservations."""

    def __init__(self, resource: str) -> None:
        self.resource = resource  # "cpus" or "memory"

    def _capacity(self, node: NodeInfo) -> int:
        return node.nano_cpus_capacity if self.resource == "cpus" else node.memory_capacity

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        return self._capacity(node) > 0

    def explain(self, failed: int, total: int) -> str:
        verb = "reports" if failed == 1 else "report"
        return f"{plural(failed)} {verb} no {self.resource}"

    def reason(self, node: NodeInfo) -> str:
        return f"reports no {self.resource}"


class CpuFilter(Filter):
    """Room for the reserved CPUs (machines reporting none are UnknownCapacityFilter's to reject)."""

    dynamic = True

    def __init__(self, nano: int) -> None:
        self.nano = nano

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        capacity = node.nano_cpus_capacity
        return capacity == 0 or node.reserved_nano_cpus + self.nano <= capacity

    def explain(self, failed: int, total: int) -> str:
        return f"insufficient cpu on {plural(failed)}"

    def reason(self, node: NodeInfo) -> str:
        free = (node.nano_cpus_capacity - node.reserved_nano_cpus) / NANO
        return f"insufficient cpu ({free:g} free, {self.nano / NANO:g} reserved per task)"


class MemoryFilter(Filter):
    """Room for the reserved memory (machines reporting none are UnknownCapacityFilter's to reject)."""

    dynamic = True

    def __init__(self, memory: int) -> None:
        self.memory = memory

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        capacity = node.memory_capacity
        return capacity == 0 or node.reserved_memory + self.memory <= capacity

    def explain(self, failed: int, total: int) -> str:
        return f"insufficient memory on {plural(failed)}"

    def reason(self, node: NodeInfo) -> str:
        free = node.memory_capacity - node.reserved_memory
        return f"insufficient memory ({free} bytes free, {self.memory} reserved per task)"


class MaxPerNodeFilter(Filter):
    """At most `limit` active tasks of the service (all spec versions) per machine."""

    dynamic = True
    service_specific = True

    def __init__(self, service_id: str, limit: int) -> None:
        self.service_id = service_id
        self.limit = limit

    def check(self, node: NodeInfo, task: Task, service: Service) -> bool:
        return node.tasks_by_service.get(self.service_id, 0) < self.limit

    def explain(self, failed: int, total: int) -> str:
        return f"max_per_node ({self.limit}) reached on {plural(failed)}"

    def reason(self, node: NodeInfo) -> str:
        return (
            f"already runs {node.tasks_of(self.service_id)} tasks of the service (max_per_node {self.limit})"
        )


def filters_for(node_set: NodeSet, task: Task, service: Service) -> list[Filter]:
    """The filters a task of this spec must pass, cheapest and most selective first; only those that
    can reject anything. Raises InvalidInput if a constraint of the spec does not parse."""
    placement = task.spec.placement
    resources = task.spec.resources
    filters: list[Filter] = [ReadyFilter(), AvailabilityFilter()]
    filters.extend(ConstraintFilter(parse_constraint(text)) for text in placement.constraints)
    if placement.machine_of is not None:
        filters.append(MachineOfFilter(placement.machine_of))
    if placement.conflicts or node_set.conflict_declared(task.service_name):
        filters.append(ConflictsFilter(task.service_name, placement.conflicts))
    cpus = nano_cpus(resources.reserve_cpus)
    if cpus > 0:
        filters += [UnknownCapacityFilter("cpus"), CpuFilter(cpus)]
    if resources.reserve_memory > 0:
        filters += [UnknownCapacityFilter("memory"), MemoryFilter(resources.reserve_memory)]
    if placement.max_per_node > 0:
        filters.append(MaxPerNodeFilter(task.service_id, placement.max_per_node))
    return filters


def explain_group(filters: Sequence[Filter], nodes: Sequence[NodeInfo], task: Task, service: Service) -> str:
    """Why no node takes another task of this group: every filter's failures, most first."""
    if not nodes:
        return "no nodes in the cluster"
    failures = [0] * len(filters)
    for node in nodes:
        for index, filter_ in enumerate(filters):
            if not filter_.check(node, task, service):
                failures[index] += 1
    ranked = sorted((-failed, index) for index, failed in enumerate(failures) if failed)
    if not ranked:
        return "no suitable node"
    total = len(nodes)
    return "; ".join(filters[index].explain(-negative, total) for negative, index in ranked)


def explain_node(filters: Sequence[Filter], node: NodeInfo, task: Task, service: Service) -> str:
    """Why this node does not take the task; empty if it does."""
    reasons = [f.reason(node) for f in filters if not f.check(node, task, service)]
    if not reasons:
        return ""
    host = node.machine.hostname if node.machine is not None else node.id
    return f"machine {host}: {'; '.join(reasons)}"
