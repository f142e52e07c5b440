"""Each feasibility filter: what it accepts, and how it explains the nodes it rejects."""

from __future__ import annotations

import pytest
from test_scheduling_support import GIB, machine, node_set, running, service, task

from treeherd.core.tasks.scheduling.constraints import parse_constraint
from treeherd.core.tasks.scheduling.filters import (
    AvailabilityFilter,
    ConflictsFilter,
    ConstraintFilter,
    CpuFilter,
    Filter,
    MachineOfFilter,
    MaxPerNodeFilter,
    MemoryFilter,
    ReadyFilter,
    UnknownCapacityFilter,
    explain_group,
    explain_node,
    filters_for,
    plural,
)
from treeherd.core.tasks.scheduling.nodeinfo import NodeInfo, NodeSet, nano_cpus
from treeherd.model.errors import InvalidInput

WEB = service("web")
ONE = task(WEB)


def node_of(nodes: NodeSet, machine_id: str) -> NodeInfo:
    found = nodes.get(machine_id)
    assert found is not None
    return found


def check(f: Filter, node: NodeInfo) -> bool:
    return f.check(node, ONE, WEB)


def test_plural() -> None:
    assert (plural(0), plural(1), plural(2)) == ("0 nodes", "1 node", "2 nodes")


@pytest.mark.parametrize(
    ("state", "passes"),
    [("ready", True), ("down", False), ("unknown", False), ("disconnected", False), (None, False)],
)
def test_ready(state: str | None, passes: bool) -> None:
    node = NodeInfo("m1", machine("m1", state=state))
    assert check(ReadyFilter(), node) is passes
    assert NodeInfo("m2").machine is None and not check(ReadyFilter(), NodeInfo("m2"))
    if not passes:
        assert ReadyFilter().reason(node) == f"not ready ({state or 'no agent'})"
    assert ReadyFilter().explain(1, 5) == "1 node not ready"
    assert ReadyFilter().explain(2, 5) == "2 nodes not ready"


@pytest.mark.parametrize(("availability", "passes"), [("active", True), ("pause", False), ("drain", False)])
def test_availability(availability: str, passes: bool) -> None:
    node = NodeInfo("m1", machine("m1", availability=availability))
    assert check(AvailabilityFilter(), node) is passes
    assert AvailabilityFilter().reason(node) == f"availability is {availability}"
    assert AvailabilityFilter().explain(3, 5) == "3 nodes paused or drained"


def test_constraint() -> None:
    f = ConstraintFilter(parse_constraint("node.labels.disk == ssd"))
    assert check(f, NodeInfo("m1", machine("m1", labels={"disk": "ssd"})))
    assert not check(f, NodeInfo("m2", machine("m2", labels={"disk": "hdd"})))
    assert not check(f, NodeInfo("m3", machine("m3")))
    assert f.explain(4, 4) == "no node satisfies node.labels.disk==ssd"
    assert f.explain(3, 4) == "node.labels.disk==ssd not satisfied on 3 nodes"
    assert f.reason(NodeInfo("m3", machine("m3"))) == "does not satisfy node.labels.disk==ssd"


def test_machine_of() -> None:
    db = service("db")
    nodes = node_set([machine("m1"), machine("m2")], [running(db, "m1", 1)])
    f = MachineOfFilter("db")
    assert check(f, node_of(nodes, "m1"))
    assert not check(f, node_of(nodes, "m2"))
    assert f.explain(2, 2) == "no node runs db (machine_of)"
    assert f.explain(1, 2) == "db not running on 1 node (machine_of)"
    assert f.reason(node_of(nodes, "m2")) == "does not run db (machine_of)"


def test_conflicts_hold_both_ways() -> None:
    db = service("db")
    cache = service("cache", conflicts=["web"])
    nodes = node_set(
        [machine("m1"), machine("m2"), machine("m3")], [running(db, "m1", 1), running(cache, "m2", 1)]
    )
    f = ConflictsFilter("web", ["db"])
    assert not f.dynamic
    # m1 runs db, which web names; m2 runs cache, which names web; m3 runs neither.
    assert [check(f, node_of(nodes, m)) for m in ("m1", "m2", "m3")] == [False, False, True]
    assert f.explain(2, 3) == "conflicting services on 2 nodes (conflicts: db)"
    assert ConflictsFilter("web", []).explain(1, 3) == "conflicting services on 1 node"
    assert f.reason(node_of(nodes, "m1")) == "runs conflicting services: db"
    assert f.reason(node_of(nodes, "m2")) == "runs conflicting services: a service that conflicts with web"


def test_a_service_conflicting_with_itself_is_dynamic() -> None:
    assert ConflictsFilter("web", ["web"]).dynamic


def test_unknown_capacity() -> None:
    cpus, memory = UnknownCapacityFilter("cpus"), UnknownCapacityFilter("memory")
    unknown = NodeInfo("m1", machine("m1", cpus=0.0, memory=0))
    known = NodeInfo("m2", machine("m2"))
    assert not check(cpus, unknown) and not check(memory, unknown)
    assert check(cpus, known) and check(memory, known)
    assert memory.explain(2, 3) == "2 nodes report no memory"
    assert cpus.explain(1, 3) == "1 node reports no cpus"
    assert cpus.reason(unknown) == "reports no cpus"


def test_cpu_and_memory_fit() -> None:
    big = service("big", cpus=3.0, memory=6 * GIB)
    nodes = node_set([machine("m1", cpus=4.0, memory=8 * GIB)], [running(big, "m1", 1)])
    m1 = node_of(nodes, "m1")
    assert check(CpuFilter(nano_cpus(1.0)), m1)
    assert not check(CpuFilter(nano_cpus(1.5)), m1)
    assert check(MemoryFilter(2 * GIB), m1)
    assert not check(MemoryFilter(2 * GIB + 1), m1)
    assert CpuFilter(1).dynamic and MemoryFilter(1).dynamic
    assert CpuFilter(1).explain(3, 4) == "insufficient cpu on 3 nodes"
    assert MemoryFilter(1).explain(1, 4) == "insufficient memory on 1 node"
    assert CpuFilter(nano_cpus(1.5)).reason(m1) == "insufficient cpu (1 free, 1.5 reserved per task)"
    assert (
        MemoryFilter(3 * GIB).reason(m1)
        == f"insufficient memory ({2 * GIB} bytes free, {3 * GIB} reserved per task)"
    )
    # A machine reporting nothing is UnknownCapacityFilter's to explain, not theirs.
    unknown = NodeInfo("m2", machine("m2", cpus=0.0, memory=0))
    assert check(CpuFilter(1), unknown) and check(MemoryFilter(1), unknown)


def test_max_per_node() -> None:
    nodes = node_set([machine("m1"), machine("m2")], [running(WEB, "m1", 1), running(WEB, "m1", 2)])
    f = MaxPerNodeFilter(WEB.id, 2)
    assert not check(f, node_of(nodes, "m1"))
    assert check(f, node_of(nodes, "m2"))
    assert f.dynamic
    assert f.explain(1, 2) == "max_per_node (2) reached on 1 node"
    assert f.reason(node_of(nodes, "m1")) == "already runs 2 tasks of the service (max_per_node 2)"


def names(filters: list[Filter]) -> list[str]:
    return [type(f).__name__ for f in filters]


def test_filters_for_builds_only_what_can_reject() -> None:
    nodes = node_set([machine("m1")])
    assert names(filters_for(nodes, ONE, WEB)) == ["ReadyFilter", "AvailabilityFilter"]
    full = service(
        "full",
        cpus=1.0,
        memory=GIB,
        constraints=["node.role==worker", "node.labels.disk==ssd"],
        max_per_node=2,
        conflicts=["db"],
        machine_of="cache",
    )
    assert names(filters_for(nodes, task(full), full)) == [
        "ReadyFilter",
        "AvailabilityFilter",
        "ConstraintFilter",
        "ConstraintFilter",
        "MachineOfFilter",
        "ConflictsFilter",
        "UnknownCapacityFilter",
        "CpuFilter",
        "UnknownCapacityFilter",
        "MemoryFilter",
        "MaxPerNodeFilter",
    ]


def test_filters_for_checks_conflicts_declared_by_others() -> None:
    cache = service("cache", conflicts=["web"])
    nodes = node_set([machine("m1")], [running(cache, "m1", 1)])
    assert "ConflictsFilter" in names(filters_for(nodes, ONE, WEB))


def test_filters_for_refuses_a_bad_constraint() -> None:
    bad = service("bad", constraints=["node.colour==red"])
    with pytest.raises(InvalidInput, match=r"unknown attribute 'node\.colour'"):
        filters_for(NodeSet(), task(bad), bad)


def test_explain_group_counts_every_failing_filter_most_first() -> None:
    ssd = service("ssd", memory=4 * GIB, constraints=["node.labels.disk==ssd"])
    nodes = node_set(
        [
            machine("m1", memory=2 * GIB),
            machine("m2", memory=2 * GIB),
            machine("m3", memory=2 * GIB, state="down"),
            machine("m4", state="down"),
            machine("m5"),
        ]
    )
    one = task(ssd)
    text = explain_group(filters_for(nodes, one, ssd), nodes.nodes(), one, ssd)
    assert (
        text == "no node satisfies node.labels.disk==ssd; insufficient memory on 3 nodes; 2 nodes not ready"
    )


def test_explain_group_without_nodes() -> None:
    assert explain_group(filters_for(NodeSet(), ONE, WEB), [], ONE, WEB) == "no nodes in the cluster"


def test_explain_node_lists_every_reason() -> None:
    big = service("big", memory=32 * GIB, constraints=["node.kind==physical"])
    nodes = node_set([machine("m1", hostname="web-1", state="down", availability="drain"), machine("m2")])
    one = task(big)
    filters = filters_for(nodes, one, big)
    assert explain_node(filters, node_of(nodes, "m1"), one, big) == (
        "machine web-1: not ready (down); availability is drain; does not satisfy node.kind==physical; "
        f"insufficient memory ({16 * GIB} bytes free, {32 * GIB} reserved per task)"
    )
    assert explain_node(filters_for(nodes, ONE, WEB), node_of(nodes, "m2"), ONE, WEB) == ""
