"""The orchestrator's pure decision: slots, restarts, replacements, history, global services."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from treeherd.core.tasks.orchestrate import reconcile
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import Placement, RestartPolicy, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ids():
    counter = itertools.count(1)
    return lambda: f"t{next(counter)}"


def service(replicas=3, mode="replicated", restart=None, constraints=(), spec_version=1, removing=False):
    return Service(
        id="svc",
        created_at=NOW,
        updated_at=NOW,
        name="web",
        node_id="n",
        mode=mode,
        replicas=replicas,
        task=TaskSpec(
            command=["run"],
            restart=restart or RestartPolicy(delay_s=0),
            placement=Placement(constraints=list(constraints)),
        ),
        spec_version=spec_version,
        removing=removing,
    )


def machine(id, state="ready", availability="active", labels=None):
    return Machine(
        id=id,
        created_at=NOW,
        updated_at=NOW,
        hostname=f"h-{id}",
        labels=labels or {},
        availability=availability,
        agent=AgentStatus(state=state),
    )


def task(id, slot, state=TaskState.RUNNING, desired=TaskState.RUNNING, machine_id="m1", created=0, **kw):
    return Task(
        id=id,
        created_at=NOW + timedelta(seconds=created),
        updated_at=NOW,
        service_id="svc",
        service_name="web",
        slot=slot,
        machine_id=machine_id,
        desired_state=desired,
        status=TaskStatus(state=state, timestamp=NOW + timedelta(seconds=created)),
        spec=TaskSpec(command=["run"]),
        **kw,
    )


def creates(result):
    return [op.object for op in result.ops if isinstance(op, Create)]


def shutdowns(result):
    return [
        op.object
        for op in result.ops
        if isinstance(op, Update)
        and isinstance(op.object, Task)
        and op.object.desired_state == TaskState.SHUTDOWN
    ]


def test_new_service_gets_one_task_per_slot():
    result = reconcile(service(replicas=3), [], {}, NOW, ids())
    made = creates(result)
    assert sorted(t.slot for t in made) == [1, 2, 3]
    # Nothing to allocate (no port, no required service, no restart delay): created PENDING, for the
    # scheduler, without a write by the allocator.
    assert all(t.status.state == TaskState.PENDING and t.desired_state == TaskState.RUNNING for t in made)
    assert all(t.spec == service().task and t.cause == "new slot" for t in made)


def test_converged_service_needs_nothing():
    tasks = [task(f"a{s}", s) for s in (1, 2, 3)]
    assert reconcile(service(), tasks, {"m1": machine("m1")}, NOW, ids()).ops == []


def test_scale_down_shuts_down_the_highest_slots():
    tasks = [task(f"a{s}", s) for s in (1, 2, 3, 4)]
    result = reconcile(service(replicas=2), tasks, {"m1": machine("m1")}, NOW, ids())
    assert sorted(t.slot for t in shutdowns(result)) == [3, 4]
    assert creates(result) == []


def test_ended_task_is_restarted_per_condition():
    for condition, state, restarted in [
        ("any", TaskState.COMPLETE, True),
        ("any", TaskState.FAILED, True),
        ("on-failure", TaskState.FAILED, True),
        ("on-failure", TaskState.COMPLETE, False),
        ("on-failure", TaskState.REJECTED, True),
        ("none", TaskState.FAILED, False),
    ]:
        svc = service(replicas=1, restart=RestartPolicy(condition=condition, delay_s=0))
        result = reconcile(svc, [task("a", 1, state=state)], {"m1": machine("m1")}, NOW, ids())
        assert [t.id for t in shutdowns(result)] == ["a"]
        assert bool(creates(result)) is restarted, (condition, state)


def test_slot_whose_last_task_ended_without_restart_stays_empty():
    svc = service(replicas=1, restart=RestartPolicy(condition="none"))
    ended = task("a", 1, state=TaskState.FAILED, desired=TaskState.SHUTDOWN)
    assert reconcile(svc, [ended], {"m1": machine("m1")}, NOW, ids()).ops == []


def test_restart_delay_creates_the_task_with_a_start_time():
    svc = service(replicas=1, restart=RestartPolicy(delay_s=5))
    result = reconcile(svc, [task("a", 1, state=TaskState.FAILED)], {}, NOW + timedelta(seconds=1), ids())
    (made,) = creates(result)
    assert made.restart_at == NOW + timedelta(seconds=5)  # 5 s after the task ended
    assert result.wake_at == made.restart_at


def test_max_attempts_within_a_window():
    policy = RestartPolicy(delay_s=0, max_attempts=2, window_s=60)
    svc = service(replicas=1, restart=policy)
    current = task("a", 1, state=TaskState.FAILED)
    made_ids = ids()
    restarts = 0
    for step in range(5):
        now = NOW + timedelta(seconds=step)
        result = reconcile(svc, [current], {}, now, made_ids)
        made = creates(result)
        if not made:
            break
        restarts += 1
        current = msgspec.structs.replace(made[0], status=TaskStatus(state=TaskState.FAILED, timestamp=now))
    assert restarts == 2
    # outside the window, attempts are available again
    later = NOW + timedelta(seconds=200)
    assert creates(reconcile(svc, [current], {}, later, made_ids))


def test_tasks_on_a_down_or_drained_machine_are_replaced():
    tasks = [task("a", 1, machine_id="m1"), task("b", 2, machine_id="m2")]
    machines = {"m1": machine("m1", state="down"), "m2": machine("m2", availability="drain")}
    result = reconcile(service(replicas=2), tasks, machines, NOW, ids())
    assert sorted(t.id for t in shutdowns(result)) == ["a", "b"]
    assert sorted(t.slot for t in creates(result)) == [1, 2]
    assert all(t.machine_id is None for t in creates(result))


def test_held_down_machines_keep_their_tasks():
    tasks = [task("a", 1, machine_id="m1"), task("b", 2, machine_id="m2")]
    machines = {"m1": machine("m1", state="down"), "m2": machine("m2", state="down")}
    result = reconcile(service(replicas=2), tasks, machines, NOW, ids(), held=frozenset({"m1"}))
    assert [t.id for t in shutdowns(result)] == ["b"]
    assert [t.slot for t in creates(result)] == [2]


def test_global_task_on_a_held_down_machine_stays_and_none_is_added():
    machines = {"m1": machine("m1", state="down"), "m2": machine("m2", state="down")}
    tasks = [task("a", 0, machine_id="m1")]
    result = reconcile(service(mode="global"), tasks, machines, NOW, ids(), held=frozenset({"m1", "m2"}))
    assert result.ops == []


def test_a_service_that_waits_keeps_its_tasks_on_down_machines_and_adds_none():
    tasks = [task("a", 1, machine_id="m1"), task("b", 2, machine_id="m2")]
    machines = {"m1": machine("m1", state="down"), "m2": machine("m2")}
    waiting = msgspec.structs.replace(service(replicas=2), on_node_down="wait")
    assert reconcile(waiting, tasks, machines, NOW, ids()).ops == []
    # The same service replacing (the default) stops slot 1 and starts it elsewhere.
    replaced = reconcile(service(replicas=2), tasks, machines, NOW, ids())
    assert [t.id for t in shutdowns(replaced)] == ["a"] and [t.slot for t in creates(replaced)] == [1]


def test_a_service_that_waits_still_moves_tasks_off_drained_machines():
    tasks = [task("a", 1, machine_id="m1")]
    machines = {"m1": machine("m1", state="down", availability="drain"), "m2": machine("m2")}
    waiting = msgspec.structs.replace(service(replicas=1), on_node_down="wait")
    result = reconcile(waiting, tasks, machines, NOW, ids())
    assert [t.id for t in shutdowns(result)] == ["a"] and [t.slot for t in creates(result)] == [1]


def test_a_global_service_that_waits_keeps_its_task_on_a_down_machine():
    machines = {"m1": machine("m1", state="down"), "m2": machine("m2")}
    tasks = [task("a", 0, machine_id="m1"), task("b", 0, machine_id="m2")]
    waiting = msgspec.structs.replace(service(mode="global"), on_node_down="wait")
    assert reconcile(waiting, tasks, machines, NOW, ids()).ops == []


def test_tasks_record_the_node_path():
    result = reconcile(service(replicas=1), [], {}, NOW, ids(), node_path="corp.web")
    assert [t.node_path for t in creates(result)] == ["corp.web"]


def test_node_loss_with_restart_none_is_not_replaced():
    svc = service(replicas=1, restart=RestartPolicy(condition="none"))
    result = reconcile(svc, [task("a", 1)], {"m1": machine("m1", state="down")}, NOW, ids())
    assert [t.id for t in shutdowns(result)] == ["a"]
    assert creates(result) == []


def test_machine_that_no_longer_satisfies_constraints():
    svc = service(replicas=1, constraints=["node.labels.disk==ssd"])
    result = reconcile(svc, [task("a", 1)], {"m1": machine("m1", labels={"disk": "hdd"})}, NOW, ids())
    assert [t.id for t in shutdowns(result)] == ["a"]
    assert len(creates(result)) == 1


def test_update_replaces_tasks_of_an_older_spec():
    tasks = [task("a", 1, spec_version=1)]
    result = reconcile(service(replicas=1, spec_version=2), tasks, {"m1": machine("m1")}, NOW, ids())
    assert [t.id for t in shutdowns(result)] == ["a"]
    assert [t.spec_version for t in creates(result)] == [2]


def test_history_keeps_the_newest_finished_tasks():
    old = [
        task(f"old{i}", 1, state=TaskState.FAILED, desired=TaskState.SHUTDOWN, created=i) for i in range(8)
    ]
    current = task("now", 1, created=100)
    result = reconcile(service(replicas=1), [*old, current], {"m1": machine("m1")}, NOW, ids(), history=5)
    deleted = sorted(op.object.id for op in result.ops if isinstance(op, Delete))
    assert deleted == ["old0", "old1", "old2"]


def test_unplaced_task_shut_down_is_marked_finished_by_the_manager():
    pending = task("a", 2, state=TaskState.PENDING, machine_id=None)
    result = reconcile(service(replicas=1), [task("b", 1), pending], {"m1": machine("m1")}, NOW, ids())
    (stopped,) = shutdowns(result)
    assert stopped.status.state == TaskState.SHUTDOWN


def test_global_service_one_task_per_eligible_machine():
    machines = {
        "m1": machine("m1"),
        "m2": machine("m2", state="down"),
        "m3": machine("m3", availability="pause"),
        "m4": machine("m4", availability="drain"),
        "m5": machine("m5", labels={"disk": "ssd"}),
    }
    result = reconcile(service(mode="global"), [], machines, NOW, ids())
    assert sorted(t.machine_id for t in creates(result)) == ["m1", "m5"]
    svc = service(mode="global", constraints=["node.labels.disk==ssd"])
    existing = [task("a", 0, machine_id="m1"), task("b", 0, machine_id="m3")]
    result = reconcile(svc, existing, machines, NOW, ids())
    assert sorted(t.id for t in shutdowns(result)) == ["a", "b"]
    assert [t.machine_id for t in creates(result)] == ["m5"]


def test_removed_service_stops_tasks_then_goes():
    svc = service(removing=True)
    running = [task("a", 1), task("b", 2, machine_id="gone")]
    result = reconcile(svc, running, {"m1": machine("m1")}, NOW, ids())
    assert sorted(t.id for t in shutdowns(result)) == ["a", "b"]
    stopped = [
        task("a", 1, state=TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN),
        task("b", 2, desired=TaskState.SHUTDOWN, machine_id="gone"),
    ]
    result = reconcile(svc, stopped, {"m1": machine("m1")}, NOW, ids())
    assert sorted(op.object.id for op in result.ops if isinstance(op, Delete)) == ["a", "b", "svc"]


# ---- convergence property ------------------------------------------------------------------------
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["fail", "complete", "node_down", "node_up", "drain", "undrain"]),
        st.integers(0, 40),
        st.integers(0, 3),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(replicas=st.integers(0, 6), events=EVENTS, condition=st.sampled_from(["any", "on-failure"]))
def test_reconcile_converges_to_the_desired_count(replicas, events, condition):
    """For any mix of task endings and node losses, once the events stop and the cluster settles,
    every slot 1..replicas has exactly one task meant to run, and no other slot has one."""
    svc = service(replicas=replicas, restart=RestartPolicy(condition=condition, delay_s=0))
    machines = {f"m{i}": machine(f"m{i}") for i in range(4)}
    tasks: dict[str, Task] = {}
    make_id = ids()
    now = NOW

    def settle(rounds):
        nonlocal now
        for _ in range(rounds):
            now += timedelta(seconds=1)
            result = reconcile(svc, list(tasks.values()), machines, now, make_id)
            for op in result.ops:
                if isinstance(op, Delete):
                    tasks.pop(op.object.id, None)
                else:
                    tasks[op.object.id] = op.object
            # a simple scheduler and agents: place new tasks on a ready, active machine; run them;
            # agents on live machines stop tasks meant to stop
            ready = sorted(
                m.id for m in machines.values() if m.agent.state == "ready" and m.availability == "active"
            )
            for t in list(tasks.values()):
                if t.desired_state <= TaskState.RUNNING and t.status.state <= TaskState.PENDING and ready:
                    tasks[t.id] = msgspec.structs.replace(
                        t,
                        machine_id=ready[int(t.id[1:]) % len(ready)],
                        status=TaskStatus(state=TaskState.RUNNING, timestamp=now),
                    )
                elif (
                    t.desired_state > TaskState.RUNNING
                    and not t.status.state.terminal
                    and t.machine_id
                    and machines[t.machine_id].agent.state == "ready"
                ):
                    tasks[t.id] = msgspec.structs.replace(
                        t, status=TaskStatus(state=TaskState.SHUTDOWN, timestamp=now)
                    )

    settle(2)
    for kind, pick, which in events:
        live = sorted(t.id for t in tasks.values() if t.status.state == TaskState.RUNNING)
        m = f"m{which}"
        if kind in ("fail", "complete") and live:
            t = tasks[live[pick % len(live)]]
            state = TaskState.FAILED if kind == "fail" else TaskState.COMPLETE
            tasks[t.id] = msgspec.structs.replace(t, status=TaskStatus(state=state, timestamp=now))
        elif kind == "node_down":
            machines[m] = msgspec.structs.replace(machines[m], agent=AgentStatus(state="down"))
        elif kind == "node_up":
            machines[m] = msgspec.structs.replace(machines[m], agent=AgentStatus(state="ready"))
        elif kind == "drain":
            machines[m] = msgspec.structs.replace(machines[m], availability="drain")
        elif kind == "undrain":
            machines[m] = msgspec.structs.replace(machines[m], availability="active")
        settle(1)
    # the cluster settles: every machine comes back and is active
    for key in machines:
        machines[key] = machine(key)
    settle(4)
    meant = [t for t in tasks.values() if t.desired_state <= TaskState.RUNNING]
    slots = sorted(t.slot for t in meant)
    if condition == "any":
        assert slots == list(range(1, replicas + 1))
    else:  # on-failure: a slot whose task completed successfully stays empty
        assert len(slots) == len(set(slots)) and all(1 <= s <= replicas for s in slots)
    assert all(t.status.state == TaskState.RUNNING for t in meant)


def test_a_sidekick_runs_on_the_machines_of_its_service_only():
    sidekick = msgspec.structs.replace(
        service(replicas=1), task=msgspec.structs.replace(service().task, binds_to="api")
    )
    machines = {m: machine(m) for m in ("m1", "m2", "m3")}
    result = reconcile(sidekick, [], machines, NOW, ids(), bound_to=frozenset({"m1", "m3"}))
    assert sorted(t.machine_id for t in creates(result)) == ["m1", "m3"]
    running = [task("a", 0, machine_id="m1"), task("b", 0, machine_id="m3")]
    result = reconcile(sidekick, running, machines, NOW, ids(), bound_to=frozenset({"m1"}))
    assert [t.id for t in shutdowns(result)] == ["b"] and creates(result) == []
