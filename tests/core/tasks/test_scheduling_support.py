"""Factories shared by the scheduler tests (machines, services, tasks with predictable ids); no tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from treeherd.core.tasks.scheduling import Decisions, NodeSet
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.services import Placement, Resources, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

GIB = 1 << 30


def machine(
    id: str,
    *,
    hostname: str | None = None,
    cpus: float = 8.0,
    memory: int = 16 * GIB,
    state: str | None = "ready",
    **fields: Any,
) -> Machine:
    """A ready, active worker (pass state=None for a machine without an agent)."""
    return Machine(
        id=id,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        hostname=hostname or f"host-{id}",
        cpus=cpus,
        memory_bytes=memory,
        agent=AgentStatus(state=state) if state is not None else None,  # type: ignore[arg-type]
        **fields,
    )


def machines(count: int, **fields: Any) -> list[Machine]:
    return [machine(f"m{index:02d}", **fields) for index in range(count)]


def service(
    name: str,
    *,
    id: str | None = None,
    cpus: float = 0.0,
    memory: int = 0,
    constraints: Iterable[str] = (),
    max_per_node: int = 0,
    conflicts: Iterable[str] = (),
    machine_of: str | None = None,
    **fields: Any,
) -> Service:
    spec = TaskSpec(
        command=["run", name],
        resources=Resources(reserve_cpus=cpus, reserve_memory=memory),
        placement=Placement(
            constraints=list(constraints),
            max_per_node=max_per_node,
            conflicts=list(conflicts),
            machine_of=machine_of,
        ),
    )
    return Service(
        id=id or f"svc-{name}",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name=name,
        node_id="n",
        task=spec,
        **fields,
    )


def task(
    svc: Service,
    slot: int = 1,
    *,
    id: str | None = None,
    state: TaskState = TaskState.PENDING,
    machine_id: str | None = None,
    desired: TaskState = TaskState.RUNNING,
    version: int = 1,
) -> Task:
    return Task(
        id=id or f"{svc.name}.{slot}",
        version=version,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id=svc.id,
        service_name=svc.name,
        slot=slot,
        machine_id=machine_id,
        desired_state=desired,
        status=TaskStatus(state=state, timestamp=FIXED_NOW),
        spec=svc.task,
        spec_version=svc.spec_version,
    )


def pending(svc: Service, count: int, *, first_slot: int = 1) -> list[Task]:
    return [task(svc, slot) for slot in range(first_slot, first_slot + count)]


def running(svc: Service, machine_id: str, slot: int, **fields: Any) -> Task:
    """An active task of `svc` on a machine (observed RUNNING)."""
    return task(
        svc,
        slot,
        id=f"{svc.name}.{slot}@{machine_id}",
        state=TaskState.RUNNING,
        machine_id=machine_id,
        **fields,
    )


def services_map(*services: Service) -> dict[str, Service]:
    return {svc.id: svc for svc in services}


def per_machine(decisions: Decisions) -> Counter[str]:
    """How many assignments each machine got."""
    return Counter(a.machine_id for a in decisions.assigned)


def node_set(machine_list: Iterable[Machine], tasks: Iterable[Task] = ()) -> NodeSet:
    return NodeSet.from_objects(machine_list, tasks)
