"""schedule(): spread ranking, placement rules, explanations, and how decisions meet the NodeSet."""

from __future__ import annotations

import msgspec
from test_scheduling_support import (
    GIB,
    machine,
    machines,
    node_set,
    pending,
    per_machine,
    running,
    service,
    services_map,
    task,
)

from treeherd.core.tasks.scheduling import Assignment, NodeSet, schedule
from treeherd.model.services import TaskStatus
from treeherd.model.states import TaskState
from treeherd.testing.factories import FIXED_NOW

WEB = service("web")


# ---- spread -----------------------------------------------------------------------------------
def test_ten_tasks_on_three_equal_nodes_spread_four_three_three() -> None:
    nodes = node_set(machines(3))
    decisions = schedule(nodes, pending(WEB, 10), services_map(WEB))
    # Ties go to the lowest machine id, so m00 takes the tenth.
    assert per_machine(decisions) == {"m00": 4, "m01": 3, "m02": 3}
    assert decisions.unplaced == {} and decisions.skipped == {}
    assert [n.tasks_of(WEB.id) for n in sorted(nodes.nodes(), key=lambda n: n.id)] == [4, 3, 3]


def test_assignments_carry_versions_and_follow_slot_order() -> None:
    nodes = node_set([machine("m1", version=5)])
    tasks = [task(WEB, 2, version=9), task(WEB, 1, version=8)]
    decisions = schedule(nodes, tasks, services_map(WEB))
    assert decisions.assigned == [
        Assignment(task_id="web.1", machine_id="m1", task_version=8, machine_version=5),
        Assignment(task_id="web.2", machine_id="m1", task_version=9, machine_version=5),
    ]


def test_tasks_of_this_service_rank_before_total_load() -> None:
    other = service("other")
    existing = [running(WEB, "m00", 1), *(running(other, "m01", slot) for slot in range(5))]
    nodes = node_set(machines(3), existing)
    decisions = schedule(nodes, pending(WEB, 4, first_slot=2), services_map(WEB, other))
    # m00 already has one web task; m01 is busy with other work but has no web task: it comes first.
    assert [a.machine_id for a in decisions.assigned] == ["m02", "m01", "m00", "m02"]
    assert per_machine(decisions) == {"m00": 1, "m01": 1, "m02": 2}


def test_existing_load_of_the_same_service_is_evened_out() -> None:
    nodes = node_set(machines(3), [running(WEB, "m00", slot) for slot in range(4)])
    decisions = schedule(nodes, pending(WEB, 5, first_slot=5), services_map(WEB))
    assert per_machine(decisions) == {"m01": 3, "m02": 2}


def test_decisions_are_deterministic_whatever_the_node_order() -> None:
    forward = schedule(node_set(machines(5)), pending(WEB, 7), services_map(WEB))
    backward = schedule(node_set(reversed(machines(5))), pending(WEB, 7), services_map(WEB))
    assert forward.assigned == backward.assigned


# ---- placement rules ---------------------------------------------------------------------------
def test_constraints_pick_matching_machines() -> None:
    ssd = service("ssd", constraints=["node.labels.disk==ssd", "node.role!=manager"])
    nodes = node_set(
        [
            machine("m1", labels={"disk": "ssd"}),
            machine("m2", labels={"disk": "ssd"}, role="manager"),
            machine("m3", labels={"disk": "hdd"}),
            machine("m4"),
        ]
    )
    decisions = schedule(nodes, pending(ssd, 3), services_map(ssd))
    assert per_machine(decisions) == {"m1": 3}


def test_no_matching_machine_is_explained() -> None:
    ssd = service("ssd", constraints=["node.labels.disk == ssd"])
    decisions = schedule(node_set(machines(3)), pending(ssd, 2), services_map(ssd))
    assert decisions.assigned == []
    assert decisions.unplaced == {
        "ssd.1": "no node satisfies node.labels.disk==ssd",
        "ssd.2": "no node satisfies node.labels.disk==ssd",
    }


def test_not_ready_paused_and_drained_nodes_take_no_tasks() -> None:
    nodes = node_set(
        [
            machine("m1", state="down"),
            machine("m2", state=None),
            machine("m3", availability="pause"),
            machine("m4", availability="drain"),
            machine("m5"),
        ]
    )
    decisions = schedule(nodes, pending(WEB, 3), services_map(WEB))
    assert per_machine(decisions) == {"m5": 3}
    none_left = node_set([machine("m1", state="disconnected"), machine("m2", availability="drain")])
    decisions = schedule(none_left, pending(WEB, 1), services_map(WEB))
    assert decisions.unplaced == {"web.1": "1 node not ready; 1 node paused or drained"}


def test_max_per_node_caps_each_machine() -> None:
    capped = service("capped", max_per_node=2)
    nodes = node_set(machines(2), [running(capped, "m00", 9)])
    decisions = schedule(nodes, pending(capped, 5), services_map(capped))
    assert per_machine(decisions) == {"m00": 1, "m01": 2}
    assert decisions.unplaced == {
        "capped.4": "max_per_node (2) reached on 2 nodes",
        "capped.5": "max_per_node (2) reached on 2 nodes",
    }


def test_conflicts_keep_services_apart_both_ways() -> None:
    db = service("db")
    web = service("web", conflicts=["db"])
    cache = service("cache", conflicts=["web"])
    nodes = node_set(machines(3), [running(db, "m00", 1), running(cache, "m01", 1)])
    decisions = schedule(nodes, pending(web, 2), services_map(db, web, cache))
    assert per_machine(decisions) == {"m02": 2}


def test_conflicts_within_one_batch() -> None:
    db = service("db")
    web = service("web", conflicts=["db"])
    nodes = node_set(machines(2))
    decisions = schedule(nodes, [*pending(db, 1), *pending(web, 2)], services_map(db, web))
    placed = {a.task_id: a.machine_id for a in decisions.assigned}
    assert placed["db.1"] not in {placed["web.1"], placed["web.2"]}


def test_a_service_conflicting_with_itself_runs_once_per_machine() -> None:
    solo = service("solo", conflicts=["solo"])
    decisions = schedule(node_set(machines(3)), pending(solo, 4), services_map(solo))
    assert per_machine(decisions) == {"m00": 1, "m01": 1, "m02": 1}
    assert decisions.unplaced == {"solo.4": "conflicting services on 3 nodes (conflicts: solo)"}


def test_machine_of_follows_its_target_even_in_the_same_batch() -> None:
    db = service("db")
    sidecar = service("sidecar", machine_of="db")
    log = service("log", machine_of="sidecar")
    nodes = node_set(machines(4))
    # Given in the wrong order: the scheduler places db, then sidecar, then log.
    batch = [*pending(log, 2), *pending(sidecar, 2), *pending(db, 2)]
    decisions = schedule(nodes, batch, services_map(db, sidecar, log))
    placed = {a.task_id: a.machine_id for a in decisions.assigned}
    db_machines = {placed["db.1"], placed["db.2"]}
    assert len(db_machines) == 2
    assert {placed["sidecar.1"], placed["sidecar.2"]} == db_machines
    assert {placed["log.1"], placed["log.2"]} == db_machines


def test_machine_of_without_its_target_is_explained() -> None:
    sidecar = service("sidecar", machine_of="db")
    decisions = schedule(node_set(machines(2)), pending(sidecar, 1), services_map(sidecar))
    assert decisions.unplaced == {"sidecar.1": "no node runs db (machine_of)"}


# ---- resources ---------------------------------------------------------------------------------
def test_resources_fill_up_and_the_rest_is_explained() -> None:
    big = service("big", cpus=1.0, memory=4 * GIB)
    nodes = node_set([machine("m1", cpus=2.0, memory=8 * GIB), machine("m2", cpus=8.0, memory=8 * GIB)])
    decisions = schedule(nodes, pending(big, 6), services_map(big))
    assert per_machine(decisions) == {"m1": 2, "m2": 2}
    assert decisions.unplaced == {
        "big.5": "insufficient memory on 2 nodes; insufficient cpu on 1 node",
        "big.6": "insufficient memory on 2 nodes; insufficient cpu on 1 node",
    }
    for node in nodes.nodes():
        assert node.reserved_memory <= node.memory_capacity
        assert node.reserved_nano_cpus <= node.nano_cpus_capacity


def test_existing_reservations_are_respected() -> None:
    big = service("big", memory=6 * GIB)
    nodes = node_set([machine("m1", memory=8 * GIB), machine("m2", memory=8 * GIB)], [running(big, "m1", 1)])
    decisions = schedule(nodes, pending(big, 2, first_slot=2), services_map(big))
    assert per_machine(decisions) == {"m2": 1}
    assert decisions.unplaced == {"big.3": "insufficient memory on 2 nodes"}


def test_machines_reporting_no_capacity_take_only_tasks_that_reserve_nothing() -> None:
    reserving = service("reserving", memory=GIB)
    nodes = node_set([machine("m1", cpus=0.0, memory=0), machine("m2", cpus=0.0, memory=0)])
    decisions = schedule(nodes, [*pending(reserving, 1), *pending(WEB, 2)], services_map(reserving, WEB))
    assert decisions.unplaced == {"reserving.1": "2 nodes report no memory"}
    assert per_machine(decisions) == {"m1": 1, "m2": 1}


# ---- global (pinned) tasks ---------------------------------------------------------------------
def test_pinned_tasks_are_checked_on_their_machine() -> None:
    agent = service("agent", mode="global", memory=GIB, constraints=["node.labels.role!=edge"])
    nodes = node_set(
        [
            machine("m1"),
            machine("m2", hostname="edge-1", labels={"role": "edge"}),
            machine("m3", hostname="down-1", state="down"),
            machine("m4", hostname="small-1", memory=GIB // 2),
        ]
    )
    tasks = [task(agent, 0, id=f"agent@{m}", machine_id=m) for m in ("m1", "m2", "m3", "m4", "m9")]
    decisions = schedule(nodes, tasks, services_map(agent))
    assert [(a.task_id, a.machine_id) for a in decisions.assigned] == [("agent@m1", "m1")]
    assert decisions.unplaced == {
        "agent@m2": "machine edge-1: does not satisfy node.labels.role!=edge",
        "agent@m3": "machine down-1: not ready (down)",
        "agent@m4": (
            f"machine small-1: insufficient memory ({GIB // 2} bytes free, {GIB} reserved per task)"
        ),
        "agent@m9": "machine m9 is not in the cluster",
    }
    m1 = nodes.get("m1")
    assert m1 is not None and m1.reserved_memory == GIB


def test_pinned_tasks_go_before_free_ones() -> None:
    agent = service("agent", mode="global", memory=4 * GIB)
    filler = service("filler", memory=4 * GIB)
    nodes = node_set([machine("m1", memory=4 * GIB)])
    decisions = schedule(
        nodes, [*pending(filler, 1), task(agent, 0, machine_id="m1")], services_map(agent, filler)
    )
    assert [a.task_id for a in decisions.assigned] == ["agent.0"]
    assert decisions.unplaced == {"filler.1": "insufficient memory on 1 node"}


# ---- what is not a candidate -------------------------------------------------------------------
def test_non_pending_and_stopping_tasks_are_skipped() -> None:
    tasks = [
        task(WEB, 1, state=TaskState.RUNNING, machine_id="m00"),
        task(WEB, 2, state=TaskState.NEW),
        task(WEB, 3, desired=TaskState.SHUTDOWN),
        task(WEB, 4, desired=TaskState.READY),  # waiting out a restart delay: placed, started later
    ]
    decisions = schedule(node_set(machines(1)), tasks, services_map(WEB))
    assert decisions.skipped == {
        "web.1": "not pending (state running)",
        "web.2": "not pending (state new)",
        "web.3": "desired state is shutdown",
    }
    assert [a.task_id for a in decisions.assigned] == ["web.4"]


def test_tasks_of_a_deleted_service_are_explained() -> None:
    gone = service("gone")
    decisions = schedule(
        node_set(machines(1)), [*pending(gone, 1), task(gone, 0, id="g@m00", machine_id="m00")], {}
    )
    assert decisions.unplaced == {
        "gone.1": "service gone (svc-gone) no longer exists",
        "g@m00": "service gone (svc-gone) no longer exists",
    }


def test_a_spec_with_a_bad_constraint_is_explained() -> None:
    bad = service("bad", constraints=["node.colour==red"])
    decisions = schedule(node_set(machines(1)), pending(bad, 1), services_map(bad))
    assert "unknown attribute 'node.colour'" in decisions.unplaced["bad.1"]


def test_no_nodes_at_all() -> None:
    decisions = schedule(NodeSet(), pending(WEB, 1), services_map(WEB))
    assert decisions.unplaced == {"web.1": "no nodes in the cluster"}


def test_spec_versions_are_separate_groups_sharing_max_per_node() -> None:
    old = service("web", max_per_node=1)
    new = msgspec.structs.replace(old, spec_version=2, task=service("web", max_per_node=1, memory=1).task)
    tasks = [task(old, 1), task(new, 2)]
    decisions = schedule(node_set(machines(2)), tasks, services_map(new))
    assert per_machine(decisions) == {"m00": 1, "m01": 1}


# ---- the NodeSet after a batch -----------------------------------------------------------------
def test_decisions_are_counted_and_the_commit_event_does_not_double_count() -> None:
    sized = service("sized", memory=GIB)
    nodes = node_set(machines(2))
    tasks = pending(sized, 4)
    decisions = schedule(nodes, tasks, services_map(sized))
    assert sum(n.active_tasks for n in nodes.nodes()) == 4
    by_id = {t.id: t for t in tasks}
    for a in decisions.assigned:
        stored = by_id[a.task_id]
        committed = msgspec.structs.replace(
            stored, machine_id=a.machine_id, status=TaskStatus(state=TaskState.ASSIGNED, timestamp=FIXED_NOW)
        )
        nodes.task_changed(stored, committed)
    assert sum(n.active_tasks for n in nodes.nodes()) == 4
    assert sum(n.reserved_memory for n in nodes.nodes()) == 4 * GIB


def test_a_dropped_decision_is_released_and_scheduled_again() -> None:
    nodes = node_set(machines(2))
    first = schedule(nodes, pending(WEB, 2), services_map(WEB))
    dropped = first.assigned[0]
    assert nodes.release(dropped.task_id)
    again = schedule(nodes, [task(WEB, 1)], services_map(WEB))
    assert again.assigned[0].machine_id == dropped.machine_id


def test_a_later_batch_sees_the_earlier_one() -> None:
    nodes = node_set(machines(3))
    schedule(nodes, pending(WEB, 4), services_map(WEB))
    later = schedule(nodes, pending(WEB, 2, first_slot=5), services_map(WEB))
    assert per_machine(later) == {"m01": 1, "m02": 1}


def test_scale_sanity_many_tasks_on_many_nodes() -> None:
    # A scaled-down run of the 100,000-on-1,000 benchmark (see the timing script in the hand-off).
    sized = service("sized", cpus=0.1, memory=64 << 20)
    nodes = node_set(machines(100, cpus=64.0, memory=256 * GIB))
    decisions = schedule(nodes, pending(sized, 10_000), services_map(sized))
    assert len(decisions.assigned) == 10_000 and not decisions.unplaced
    assert set(per_machine(decisions).values()) == {100}


def test_scheduling_the_same_pending_tasks_again_supersedes_the_earlier_decisions() -> None:
    sized = service("sized", memory=GIB)
    nodes = node_set(machines(2))
    tasks = pending(sized, 3)
    schedule(nodes, tasks, services_map(sized))
    again = schedule(nodes, tasks, services_map(sized))
    assert len(again.assigned) == 3
    assert sum(n.active_tasks for n in nodes.nodes()) == 3
    assert sum(n.reserved_memory for n in nodes.nodes()) == 3 * GIB


def test_many_small_services_share_the_lane_and_spread_by_total_load() -> None:
    small = [service(f"s{index}") for index in range(6)]
    nodes = node_set(machines(4))
    decisions = schedule(nodes, [t for svc in small for t in pending(svc, 2)], services_map(*small))
    # 12 tasks of 6 services on 4 machines: each service on 2 distinct machines, 3 tasks per machine.
    assert set(per_machine(decisions).values()) == {3}
    for svc in small:
        placed = [a.machine_id for a in decisions.assigned if a.task_id.startswith(f"{svc.name}.")]
        assert len(set(placed)) == 2


def test_load_placed_through_another_lane_is_seen() -> None:
    # "a" and "c" share constraints (one lane), "b" has none (another lane) and is placed between them.
    a = service("a", constraints=["node.role==worker"])
    b = service("b")
    c = service("c", constraints=["node.role==worker"])
    nodes = node_set(machines(3))
    decisions = schedule(nodes, [*pending(c, 1), *pending(b, 2), *pending(a, 1)], services_map(a, b, c))
    placed = {x.task_id: x.machine_id for x in decisions.assigned}
    assert (placed["a.1"], placed["b.1"], placed["b.2"]) == ("m00", "m01", "m02")
    # Every machine now has one task: the tie goes to the lowest id, not to a stale count.
    assert placed["c.1"] == "m00"


def test_a_full_cluster_explains_same_shaped_services_without_scanning_again() -> None:
    big = [service(f"big{index}", memory=4 * GIB) for index in range(3)]
    small = service("small", memory=GIB)
    nodes = node_set(machines(2, memory=6 * GIB))
    batch = [t for svc in big for t in pending(svc, 1)] + pending(small, 2)
    decisions = schedule(nodes, batch, services_map(*big, small))
    # big0 and big1 take a machine each; big2 has the same shape as them and finds no room: "small"
    # is another shape, and still fits in what is left.
    assert {a.task_id for a in decisions.assigned} == {"big0.1", "big1.1", "small.1", "small.2"}
    assert decisions.unplaced == {"big2.1": "insufficient memory on 2 nodes"}
