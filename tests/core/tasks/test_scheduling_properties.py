"""Properties of schedule() over generated clusters (Hypothesis).

Whatever the cluster, a batch never over-commits a machine's reservations, never breaks a constraint,
Conflicts, MachineOf or max_per_node, accounts for every task exactly once, leaves a task unplaced only
when no machine could take it, keeps the NodeSet equal to a rebuild from scratch, and spreads one
service evenly over identical machines. And it decides exactly what a naive O(nodes x tasks) scan of
the same ranking decides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_support import GIB, machine, service, task

from treeherd.core.tasks.scheduling import Decisions, NodeSet, parse_constraint, schedule
from treeherd.core.tasks.scheduling.filters import filters_for
from treeherd.core.tasks.scheduling.nodeinfo import Demand
from treeherd.model.objects import Machine
from treeherd.model.services import Service, Task, TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

# Few distinct sets, so that services often share one (and the scheduler's per-batch lane for it).
CONSTRAINTS: list[list[str]] = [
    [],
    [],
    ["node.role==worker"],
    ["node.labels.disk!=hdd"],
    ["node.labels.disk==ssd", "node.kind==physical"],
]
NAMES = ["s0", "s1", "s2", "s3"]


@st.composite
def machines(draw: st.DrawFn) -> list[Machine]:
    count = draw(st.integers(1, 8))
    return [
        machine(
            f"m{index}",
            cpus=draw(st.sampled_from([0.0, 1.0, 2.0, 4.0])),
            memory=draw(st.sampled_from([0, GIB, 2 * GIB, 4 * GIB])),
            state=draw(st.sampled_from(["ready"] * 6 + ["down", None])),
            availability=draw(st.sampled_from(["active"] * 6 + ["pause", "drain"])),
            labels=draw(st.sampled_from([{}, {"disk": "ssd"}, {"disk": "hdd"}])),
            role=draw(st.sampled_from(["worker", "manager"])),
            machine_kind=draw(st.sampled_from(["virtual", "physical"])),
        )
        for index in range(count)
    ]


@st.composite
def services(draw: st.DrawFn) -> list[Service]:
    count = draw(st.sampled_from([1, 2, 3, 4, 4, 4]))
    found = []
    for index in range(count):
        found.append(
            service(
                NAMES[index],
                cpus=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0])),
                memory=draw(st.sampled_from([0, 0, GIB // 2, GIB])),
                constraints=draw(st.sampled_from(CONSTRAINTS)),
                max_per_node=draw(st.integers(0, 3)),
                conflicts=draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)),
                # MachineOf only names an earlier service: no cycles.
                machine_of=draw(st.none() | st.sampled_from(NAMES[:index])) if index else None,
                mode=draw(st.sampled_from(["replicated"] * 4 + ["global"])),
            )
        )
    return found


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Machine], list[Service], list[Task], list[Task]]:
    """Machines, services, tasks already active on machines, and a batch of tasks to schedule."""
    machine_list = draw(machines())
    service_list = draw(services())
    machine_ids = [m.id for m in machine_list]
    existing = []
    for svc in service_list:
        for slot in range(draw(st.integers(0, 3))):
            existing.append(
                task(
                    svc,
                    100 + slot,
                    state=draw(st.sampled_from([TaskState.ASSIGNED, TaskState.RUNNING, TaskState.FAILED])),
                    machine_id=draw(st.sampled_from(machine_ids)),
                )
            )
    batch = []
    for svc in service_list:
        if svc.mode == "global":
            batch += [task(svc, 0, id=f"{svc.name}@{m}", machine_id=m) for m in machine_ids]
        else:
            batch += [task(svc, slot) for slot in range(1, draw(st.integers(0, 12)) + 1)]
    return machine_list, service_list, existing, batch


def committed(batch: list[Task], decisions: Decisions) -> list[Task]:
    """The batch's assigned tasks as the store holds them once the shell commits."""
    by_id = {t.id: t for t in batch}
    status = TaskStatus(state=TaskState.ASSIGNED, timestamp=FIXED_NOW)
    return [
        msgspec.structs.replace(by_id[a.task_id], machine_id=a.machine_id, status=status)
        for a in decisions.assigned
    ]


def state_of(nodes: NodeSet) -> dict[str, tuple[Any, ...]]:
    return {
        n.id: (
            n.active_tasks,
            n.reserved_nano_cpus,
            n.reserved_memory,
            n.tasks_by_service,
            n.tasks_by_name,
            n.conflicts_declared,
        )
        for n in nodes.nodes()
    }


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_decisions_respect_every_rule(
    cluster: tuple[list[Machine], list[Service], list[Task], list[Task]],
) -> None:
    machine_list, service_list, existing, batch = cluster
    by_name = {s.name: s for s in service_list}
    nodes = NodeSet.from_objects(machine_list, existing)
    before = {n.id: (n.reserved_nano_cpus, n.reserved_memory) for n in nodes.nodes()}
    decisions = schedule(nodes, batch, {s.id: s for s in service_list})

    # Every task is accounted for exactly once.
    assigned_ids = [a.task_id for a in decisions.assigned]
    assert len(assigned_ids) == len(set(assigned_ids))
    assert sorted([*assigned_ids, *decisions.unplaced, *decisions.skipped]) == sorted(t.id for t in batch)
    assert all(decisions.unplaced.values())

    # The NodeSet counted the decisions exactly as a rebuild from the committed state does.
    placed = committed(batch, decisions)
    assert state_of(nodes) == state_of(NodeSet.from_objects(machine_list, [*existing, *placed]))

    machines_by_id = {m.id: m for m in machine_list}
    active = [t for t in [*existing, *placed] if TaskState.ASSIGNED <= t.status.state <= TaskState.RUNNING]
    on_machine: dict[str, list[Task]] = defaultdict(list)
    for t in active:
        on_machine[t.machine_id or ""].append(t)

    for node in nodes.nodes():
        # Never over-commit: a reservation only lands where it fits (existing over-commit is not made worse).
        cpus_before, memory_before = before[node.id]
        assert node.reserved_nano_cpus <= max(node.nano_cpus_capacity, cpus_before)
        assert node.reserved_memory <= max(node.memory_capacity, memory_before)

    for t in placed:
        host = machines_by_id[t.machine_id or ""]
        placement = t.spec.placement
        assert host.agent is not None and host.agent.state == "ready"
        assert host.availability == "active"
        assert all(parse_constraint(c).matches(host) for c in placement.constraints)
        neighbours = [u for u in on_machine[host.id] if u.id != t.id]
        names_there = {u.service_name for u in neighbours}
        assert not set(placement.conflicts) & names_there
        assert all(t.service_name not in u.spec.placement.conflicts for u in neighbours)
        if placement.machine_of is not None:
            assert placement.machine_of in names_there
        if placement.max_per_node:
            mine = sum(1 for u in on_machine[host.id] if u.service_id == t.service_id)
            assert mine <= placement.max_per_node

    # Unplaced means no machine can take it (MachineOf targets come first, and everything else only
    # gets stricter as a batch goes on, so the final state is a fair judge).
    for t in batch:
        if t.id not in decisions.unplaced:
            continue
        svc = by_name[t.service_name]
        filters = filters_for(nodes, t, svc)
        candidates = (
            nodes.nodes() if t.machine_id is None else [n for n in nodes.nodes() if n.id == t.machine_id]
        )
        if t.machine_id is not None and t.spec.placement.machine_of is not None:
            continue
        assert not any(all(f.check(n, t, svc) for f in filters) for n in candidates), decisions.unplaced[t.id]


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 12),
    tasks=st.integers(0, 60),
    cpus=st.sampled_from([0.0, 0.25, 1.0]),
    max_per_node=st.integers(0, 8),
)
def test_one_service_spreads_evenly_on_identical_machines(
    count: int, tasks: int, cpus: float, max_per_node: int
) -> None:
    machine_list = [machine(f"m{index:02d}", cpus=4.0) for index in range(count)]
    svc = service("web", cpus=cpus, max_per_node=max_per_node)
    nodes = NodeSet.from_objects(machine_list, [])
    decisions = schedule(nodes, [task(svc, slot) for slot in range(1, tasks + 1)], {svc.id: svc})
    counts = Counter({m.id: 0 for m in machine_list}) + Counter(a.machine_id for a in decisions.assigned)
    per_node = [counts[m.id] for m in machine_list]
    assert max(per_node) - min(per_node) <= 1
    room = count * min(x for x in (max_per_node or tasks, int(4.0 // cpus) if cpus else tasks))
    assert len(decisions.assigned) == min(tasks, room)


def naive_schedule(nodes: NodeSet, batch: list[Task], services: dict[str, Service]) -> list[tuple[str, str]]:
    """The reference: for each task, scan every node and take the best by (tasks of the service, tasks
    in total, machine id); pinned tasks first, then groups with MachineOf targets first, then by name."""
    result = []

    def place(t: Task, candidates: list[Any], svc: Service) -> bool:
        filters = filters_for(nodes, t, svc)
        fits = [n for n in candidates if all(f.check(n, t, svc) for f in filters)]
        if not fits:
            return False
        best = min(fits, key=lambda n: (n.tasks_of(t.service_id), n.active_tasks, n.id))
        nodes.assign(t.id, best, Demand.of(t))
        result.append((t.id, best.id))
        return True

    for t in batch:
        if t.machine_id is not None:
            place(t, [n for n in nodes.nodes() if n.id == t.machine_id], services[t.service_id])
    groups: dict[tuple[str, int], list[Task]] = defaultdict(list)
    for t in batch:
        if t.machine_id is None:
            groups[(t.service_id, t.spec_version)].append(t)
    target = {ts[0].service_name: ts[0].spec.placement.machine_of for ts in groups.values()}

    def depth(name: str) -> int:
        after = target.get(name)
        return 0 if after is None else 1 + depth(after)

    for key in sorted(groups, key=lambda k: (depth(groups[k][0].service_name), groups[k][0].service_name, k)):
        for t in sorted(groups[key], key=lambda t: t.slot):
            if not place(t, nodes.nodes(), services[t.service_id]):
                break
    return result


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_decides_what_a_naive_scan_decides(
    cluster: tuple[list[Machine], list[Service], list[Task], list[Task]],
) -> None:
    machine_list, service_list, existing, batch = cluster
    services = {s.id: s for s in service_list}
    decisions = schedule(NodeSet.from_objects(machine_list, existing), batch, services)
    expected = naive_schedule(NodeSet.from_objects(machine_list, existing), batch, services)
    assert [(a.task_id, a.machine_id) for a in decisions.assigned] == expected
