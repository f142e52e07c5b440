"""A service's slots as the reconciler walks them: a replicated service's slot numbers (those it
has tasks in and those it wants), a global service's machines (those with its tasks and those
eligible), each with its tasks and whether it is wanted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet

from treeherd.core.tasks.machine_problems import agent_down
from treeherd.core.tasks.scheduling.constraints import Constraint
from treeherd.model.objects import Machine
from treeherd.model.services import Service, Task
from treeherd.model.states import TaskState

__all__ = [
    "DESIRED_RUNNING_LABELS",
    "Slot",
    "desired_running",
    "eligible_for_global",
    "file_by_slot",
    "service_slots",
    "slots_in_order",
]

# (key: the slot number or the machine id, slot number (0 for global), its tasks, the machine a global
# slot is bound to, whether the slot is wanted)
Slot = tuple[str, int, list[Task], str | None, bool]


def service_slots(
    service: Service,
    tasks: Sequence[Task],
    machines: Mapping[str, Machine],
    constraints: Sequence[Constraint],
    held: AbstractSet[str],
    bound_to: AbstractSet[str],
) -> Iterator[Slot]:
    """The service's slots, in order."""
    if service.mode == "replicated" and service.task.binds_to is None:
        by_slot: dict[int, Task | list[Task]] = {}
        file_by_slot(by_slot, tasks)  # (a slot's list is made as it is walked, and soon let go)
        replicas = service.replicas
        for slot in slots_in_order(by_slot, replicas):
            found = by_slot.get(slot)
            existing = [] if found is None else found if isinstance(found, list) else [found]
            yield (str(slot), slot, existing, None, slot <= replicas)
        return
    by_machine: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        by_machine[task.machine_id or ""].append(task)
    for machine_id in sorted(set(by_machine) | set(machines)):
        machine = machines.get(machine_id)
        existing = by_machine.get(machine_id, [])
        wanted = machine is not None and (
            eligible_for_global(machine, constraints)
            or (machine_id in held and any(desired_running(t) for t in existing))
        )
        if service.task.binds_to is not None:
            wanted = wanted and machine_id in bound_to
        if wanted and not existing and machine is not None and machine.availability == "pause":
            continue  # a paused machine takes no new tasks
        yield (machine_id, 0, existing, machine_id or None, wanted)


def file_by_slot(by_slot: dict[int, Task | list[Task]], tasks: Iterable[Task]) -> None:
    """File `tasks` in `by_slot` under their slots: a slot's one task, or a list of its tasks when it
    has several. A list for every slot would be a million objects more for the garbage collector to
    count, and walk."""
    for task in tasks:
        found = by_slot.get(task.slot)
        if found is None:
            by_slot[task.slot] = task
        elif isinstance(found, list):
            found.append(task)
        else:
            by_slot[task.slot] = [found, task]


def slots_in_order(present: Collection[int], wanted: int = 0) -> Iterator[int]:
    """The slot numbers in `present` or in 1..`wanted`, in increasing order, made as they are walked.

    A service's slots are dense (1 to its replicas, and those of replicas scaled away), so their range
    is walked instead of sorted: a sort of a million slots holds the loop for a quarter of a second
    before the first one is out, a walk hands them out a step at a time. Sparse slots are sorted."""
    low, high = (min(present), max(present)) if present else (1, 0)
    if wanted >= 1:
        low, high = min(low, 1), max(high, wanted)
    if high - low < 2 * (len(present) + max(wanted, 0)):
        for slot in range(low, high + 1):
            if 1 <= slot <= wanted or slot in present:
                yield slot
        return
    yield from sorted(set(present).union(range(1, wanted + 1)))


def desired_running(task: Task) -> bool:
    return task.desired_state <= TaskState.RUNNING


# The same rule for a task's row, which names its desired state by label (`TaskRow.desired_state`).
DESIRED_RUNNING_LABELS = frozenset(state.label for state in TaskState if state <= TaskState.RUNNING)


def eligible_for_global(machine: Machine, constraints: Sequence[Constraint]) -> bool:
    """A machine a global service runs on: has a live agent, is not drained, satisfies the constraints."""
    if machine.agent is None or agent_down(machine) or machine.availability == "drain":
        return False
    return all(c.matches(machine) for c in constraints)
