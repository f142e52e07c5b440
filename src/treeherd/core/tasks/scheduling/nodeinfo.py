"""What the scheduler knows about every machine, kept up to date one event at a time.

`NodeInfo` is one machine plus what its active tasks take: reserved CPUs (in nano-CPUs, integers, so
adding and removing reservations never drifts) and memory, active tasks in total, per service id (spread
ranking, max_per_node) and per service name (Conflicts, MachineOf), and the service names those tasks
declare as conflicts (so Conflicts holds in both directions).

`NodeSet` holds every NodeInfo and is fed by the shell: `set_machine`, `remove_machine`, and
`task_changed(old, new)` for every task event. Each update is O(1) (plus the task's conflicts list).

Which tasks count (SwarmKit's rule): a task uses its machine's resources while it has a `machine_id` and
its observed state is ASSIGNED up to RUNNING. Desired state does not matter: a task told to shut down
still holds its resources until the agent reports it ended. A PENDING task pinned to a machine (a global
service's) does not count until it is assigned.

The NodeSet keys what it counts by task id, so an update is idempotent and `old` is never trusted:
replaying an event, or receiving the commit of a decision the scheduler already counted, changes nothing.
Decisions (`assign`) are counted at once, so the rest of a batch sees them. The shell either commits a
decision (its ASSIGNED event then finds it already counted) or undoes it with `release(task_id)` (or,
equivalently, `task_changed(None, task_as_stored)`). A task on a machine the set does not know is
counted on a placeholder that is never offered to the scheduler; the machine's arrival fills it in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from treeherd.core.view import View
from treeherd.model.objects import Machine
from treeherd.model.services import Task, TaskSpec
from treeherd.model.states import TaskState

__all__ = ["NANO", "Demand", "NodeInfo", "NodeSet", "counts_against_node", "nano_cpus"]

NANO = 1_000_000_000


def nano_cpus(cpus: float) -> int:
    """CPUs as integer nano-CPUs (SwarmKit's unit): exact sums for reservations."""
    return round(cpus * NANO)


def counts_against_node(task: Task) -> bool:
    """Whether the task holds resources on its machine (see the module docstring)."""
    return task.machine_id is not None and TaskState.ASSIGNED <= task.status.state <= TaskState.RUNNING


class Demand(NamedTuple):
    """What one task takes from its node; equal for every task of one service spec version."""

    service_id: str
    service_name: str
    cpus: int  # nano-CPUs
    memory: int
    conflicts: tuple[str, ...]

    @classmethod
    def of(cls, task: Task) -> Demand:
        spec = task.spec
        resources = spec.resources
        return cls(
            task.service_id,
            task.service_name,
            nano_cpus(resources.reserve_cpus),
            resources.reserve_memory,
            tuple(spec.placement.conflicts),
        )


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


class NodeInfo:
    """One machine and what its active tasks use. `machine` is None for a placeholder."""

    __slots__ = (
        "active_tasks",
        "conflicts_declared",
        "id",
        "machine",
        "memory_capacity",
        "nano_cpus_capacity",
        "reserved_memory",
        "reserved_nano_cpus",
        "tasks_by_name",
        "tasks_by_service",
        "version",
    )

    def __init__(self, machine_id: str, machine: Machine | None = None) -> None:
        self.id = machine_id
        self.machine: Machine | None = None
        self.version = 0  # the machine's version: decisions carry it for the shell's staleness check
        self.nano_cpus_capacity = 0
        self.memory_capacity = 0
        self.reserved_nano_cpus = 0
        self.reserved_memory = 0
        self.active_tasks = 0
        self.tasks_by_service: dict[str, int] = {}
        self.tasks_by_name: dict[str, int] = {}
        self.conflicts_declared: dict[str, int] = {}
        if machine is not None:
            self.set_machine(machine)

    def set_machine(self, machine: Machine) -> None:
        self.machine = machine
        self.version = machine.version
        self.nano_cpus_capacity = nano_cpus(machine.cpus)
        self.memory_capacity = machine.memory_bytes

    @property
    def reserved_cpus(self) -> float:
        return self.reserved_nano_cpus / NANO

    def add(self, demand: Demand) -> None:
        """Count one more active task."""
        self.reserved_nano_cpus += demand.cpus
        self.reserved_memory += demand.memory
        self.active_tasks += 1
        by_service = self.tasks_by_service
        by_service[demand.service_id] = by_service.get(demand.service_id, 0) + 1
        by_name = self.tasks_by_name
        by_name[demand.service_name] = by_name.get(demand.service_name, 0) + 1
        for name in demand.conflicts:
            self.conflicts_declared[name] = self.conflicts_declared.get(name, 0) + 1

    def remove(self, demand: Demand) -> None:
        """Stop counting one task (the exact inverse of `add`)."""
        self.reserved_nano_cpus -= demand.cpus
        self.reserved_memory -= demand.memory
        self.active_tasks -= 1
        _bump(self.tasks_by_service, demand.service_id, -1)
        _bump(self.tasks_by_name, demand.service_name, -1)
        for name in demand.conflicts:
            _bump(self.conflicts_declared, name, -1)

    def cpus_fit(self, nano: int) -> bool:
        """Room for `nano` more nano-CPUs. A machine reporting no CPUs fits no CPU reservation."""
        return nano <= 0 or self.reserved_nano_cpus + nano <= self.nano_cpus_capacity

    def memory_fits(self, memory: int) -> bool:
        """Room for `memory` more bytes. A machine reporting no memory fits no memory reservation."""
        return memory <= 0 or self.reserved_memory + memory <= self.memory_capacity

    def tasks_of(self, service_id: str) -> int:
        return self.tasks_by_service.get(service_id, 0)

    def runs(self, service_name: str) -> bool:
        """Whether an active task of the service named so is on this machine."""
        return service_name in self.tasks_by_name

    def __repr__(self) -> str:
        host = self.machine.hostname if self.machine is not None else "?"
        return f"NodeInfo({self.id} {host}: {self.active_tasks} tasks)"


class NodeSet:
    """Every NodeInfo, and which task is counted where (see the module docstring)."""

    __slots__ = ("_counted_on", "_declared", "_demands", "_last_demand", "_nodes", "_running")

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        # task id -> the machine it is counted on, and what it takes there. Two flat dicts rather than
        # one of tuples: a batch adds 100,000 entries, and tuples would feed the garbage collector.
        self._counted_on: dict[str, str] = {}
        self._demands: dict[str, Demand] = {}
        # service name -> how many counted tasks anywhere declare a conflict with it.
        self._declared: dict[str, int] = {}
        # service id -> the nodes with at least one of its counted tasks (placeholders included).
        self._running: dict[str, dict[str, NodeInfo]] = {}
        # The last spec a demand was made of, and that demand (see `_demand_of`).
        self._last_demand: tuple[TaskSpec, Demand] | None = None

    @classmethod
    def from_objects(cls, machines: Iterable[Machine], tasks: Iterable[Task]) -> NodeSet:
        node_set = cls()
        for machine in machines:
            node_set.set_machine(machine)
        for task in tasks:
            node_set.task_changed(None, task)
        return node_set

    @classmethod
    def from_view(cls, view: View) -> NodeSet:
        """Every machine of the view and every task counted against one."""
        return cls.from_objects(view.all(Machine), view.all(Task))

    # ---- machines ---------------------------------------------------------------------------------
    def set_machine(self, machine: Machine) -> None:
        """A machine was created or updated."""
        node = self._nodes.get(machine.id)
        if node is None:
            self._nodes[machine.id] = NodeInfo(machine.id, machine)
        else:
            node.set_machine(machine)

    def remove_machine(self, machine_id: str) -> None:
        """A machine was deleted. Tasks still counted on it stay counted until their own events."""
        node = self._nodes.get(machine_id)
        if node is None:
            return
        if node.active_tasks:
            node.machine = None
        else:
            del self._nodes[machine_id]

    # ---- tasks ------------------------------------------------------------------------------------
    def task_changed(self, old: Task | None, new: Task | None) -> None:
        """A task was created (old None), updated, or deleted (new None)."""
        if new is None:
            if old is not None:
                self.release(old.id)
            return
        machine_id = new.machine_id
        if machine_id is None or not counts_against_node(new):
            self.release(new.id)
            return
        demand = self._demand_of(new)
        if self._counted_on.get(new.id) == machine_id and self._demands[new.id] == demand:
            return
        self._count(new.id, machine_id, demand)

    def _demand_of(self, task: Task) -> Demand:
        """`Demand.of`, remembered for the last spec: the events of a batch are mostly status changes
        of one service's tasks, which share their spec object, and each made a demand to compare."""
        last = self._last_demand
        if last is not None:
            spec, demand = last
            same_service = demand.service_id == task.service_id and demand.service_name == task.service_name
            if spec is task.spec and same_service:
                return demand
        demand = Demand.of(task)
        self._last_demand = (task.spec, demand)
        return demand

    def assign(self, task_id: str, node: NodeInfo, demand: Demand) -> None:
        """Count a decision: the task is on `node` (a known machine's, from `get` or `nodes`) for the
        rest of the batch, and after until `release` or the task's own events say otherwise."""
        self.release(task_id)
        self._add(task_id, node, demand)

    def _add(self, task_id: str, node: NodeInfo, demand: Demand) -> None:
        self._counted_on[task_id] = node.id
        self._demands[task_id] = demand
        node.add(demand)
        if node.tasks_by_service[demand.service_id] == 1:
            self._running.setdefault(demand.service_id, {})[node.id] = node
        for name in demand.conflicts:
            self._declared[name] = self._declared.get(name, 0) + 1

    def release(self, task_id: str) -> bool:
        """Stop counting a task (undo a decision the shell dropped). True if it was counted."""
        machine_id = self._counted_on.pop(task_id, None)
        if machine_id is None:
            return False
        demand = self._demands.pop(task_id)
        node = self._nodes[machine_id]
        node.remove(demand)
        if demand.service_id not in node.tasks_by_service:
            where = self._running[demand.service_id]
            del where[machine_id]
            if not where:
                del self._running[demand.service_id]
        for name in demand.conflicts:
            _bump(self._declared, name, -1)
        if node.machine is None and not node.active_tasks:
            del self._nodes[machine_id]
        return True

    def _count(self, task_id: str, machine_id: str, demand: Demand) -> None:
        # Release first: it may drop the very placeholder this task was the last one on.
        self.release(task_id)
        node = self._nodes.get(machine_id)
        if node is None:
            node = self._nodes[machine_id] = NodeInfo(machine_id)
        self._add(task_id, node, demand)

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, machine_id: str) -> NodeInfo | None:
        """The node of a known machine (None for unknown machines and placeholders)."""
        node = self._nodes.get(machine_id)
        return node if node is not None and node.machine is not None else None

    def nodes(self) -> list[NodeInfo]:
        """Every known machine's node, in no particular order."""
        return [node for node in self._nodes.values() if node.machine is not None]

    def running(self, service_id: str) -> list[NodeInfo]:
        """The known machines' nodes with at least one active task of the service."""
        where = self._running.get(service_id)
        if where is None:
            return []
        return [node for node in where.values() if node.machine is not None]

    def conflict_declared(self, service_name: str) -> bool:
        """Whether any counted task, anywhere, declares a conflict with the service named so."""
        return service_name in self._declared

    def counted(self, task_id: str) -> str | None:
        """The machine a task is counted on, or None."""
        return self._counted_on.get(task_id)

    def __len__(self) -> int:
        return sum(1 for node in self._nodes.values() if node.machine is not None)

    def __iter__(self) -> Iterator[NodeInfo]:
        return iter(self.nodes())
