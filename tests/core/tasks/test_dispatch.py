"""The dispatcher's pure decisions: deadlines, rate limits, status validation and batching, machine
records from registrations, and the assignment set."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest

from treeherd.core.tasks.dispatch import (
    AssignmentSet,
    Deadlines,
    RegistrationLimiter,
    StatusBatcher,
    Verdict,
    agent_should_know,
    check_status,
    cluster_settings,
    heartbeat_period,
    heartbeat_timeout,
    plan_agent_state,
    plan_mark_unknown,
    plan_register,
    plan_status_flush,
)
from treeherd.model.errors import InvalidInput
from treeherd.model.events import Event
from treeherd.model.objects import AgentStatus, Machine
from treeherd.model.ops import Create, Delete, Update
from treeherd.model.services import ClusterSettings, Service, Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState
from treeherd.model.wire import Register, TaskStatusUpdate
from treeherd.store.memory import MemoryStore
from treeherd.testing.factories import FIXED_NOW, Ids, machine, node

S = TaskState
DEFAULTS = ClusterSettings(id="c", created_at=FIXED_NOW, updated_at=FIXED_NOW)


def status(state: TaskState, message: str = "") -> TaskStatus:
    return TaskStatus(state=state, timestamp=FIXED_NOW, message=message)


def task(
    id: str = "t1",
    *,
    machine_id: str | None = "m1",
    state: TaskState = S.ASSIGNED,
    desired: TaskState = S.RUNNING,
    **fields: Any,
) -> Task:
    return Task(
        id=id,
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        service_id="svc",
        service_name="web",
        machine_id=machine_id,
        desired_state=desired,
        status=status(state),
        spec=TaskSpec(command=["sleep", "1"]),
        **fields,
    )


# ---- heartbeats -------------------------------------------------------------------------------------
def test_period_adds_the_drawn_share_of_epsilon() -> None:
    assert heartbeat_period(DEFAULTS, 0.0) == 5.0
    assert heartbeat_period(DEFAULTS, 0.5) == 5.25
    assert heartbeat_period(DEFAULTS, 1.0) == 5.5
    assert heartbeat_period(DEFAULTS, 7.0) == 5.5  # a draw out of range is clamped


def test_timeout_is_the_period_times_the_grace_and_doubled_when_unknown() -> None:
    assert heartbeat_timeout(5.0, DEFAULTS) == 15.0
    assert heartbeat_timeout(5.5, DEFAULTS) == pytest.approx(16.5)
    assert heartbeat_timeout(5.0, DEFAULTS, unknown=True) == 30.0
    custom = msgspec.structs.replace(DEFAULTS, heartbeat_period_s=1.0, heartbeat_grace_multiplier=4.0)
    assert heartbeat_timeout(heartbeat_period(custom, 0.0), custom) == 4.0


def test_deadlines_expire_in_order_and_heartbeats_push_them_back() -> None:
    table = Deadlines()
    table.register("a", 0.0, 15.0)
    table.register("b", 1.0, 15.0)
    table.register("c", 0.0, 30.0)  # unknown: doubled grace
    assert table.heartbeat("a", 10.0, 15.0)  # a now due at 25
    assert not table.heartbeat("nobody", 10.0, 15.0)
    assert "nobody" not in table
    assert table.next_due() == 16.0
    assert table.expired(15.9) == []
    assert table.expired(16.0) == ["b"]
    assert table.expired(100.0) == ["a", "c"]  # earliest first
    assert len(table) == 0 and table.next_due() is None


def test_deadlines_forget_and_ties_expire_by_id() -> None:
    table = Deadlines()
    for node_id in ("z", "y", "x"):
        table.register(node_id, 0.0, 5.0)
    assert table.forget("y") and not table.forget("y")
    assert table.expired(5.0) == ["x", "z"]


def test_deadline_heap_stays_small_under_many_heartbeats() -> None:
    table = Deadlines()
    table.register("a", 0.0, 15.0)
    for second in range(1, 1000):
        table.heartbeat("a", float(second), 15.0)
    assert len(table._heap) < 100
    assert table.due("a") == 1014.0
    assert table.expired(1013.9) == [] and table.expired(1014.0) == ["a"]


# ---- registration ---------------------------------------------------------------------------------
def test_rate_limiter_refuses_the_fourth_registration_within_the_window() -> None:
    limiter = RegistrationLimiter()
    for now in (0.0, 1.0, 2.0):
        assert limiter.admit("h", now, limit=3, window_s=8.0) is None
    assert limiter.admit("h", 3.0, limit=3, window_s=8.0) == pytest.approx(5.0)
    assert limiter.admit("other", 3.0, limit=3, window_s=8.0) is None  # per hostname
    assert limiter.admit("h", 7.9, limit=3, window_s=8.0) == pytest.approx(0.1)
    # Refusals are not counted: once the first one leaves the window, the next one gets in.
    assert limiter.admit("h", 8.0, limit=3, window_s=8.0) is None
    assert limiter.admit("h", 8.5, limit=3, window_s=8.0) is not None


def test_rate_limiter_prunes_idle_keys_and_zero_disables_it() -> None:
    limiter = RegistrationLimiter()
    limiter.admit("a", 0.0, limit=3, window_s=8.0)
    limiter.admit("b", 5.0, limit=3, window_s=8.0)
    limiter.prune(9.0, 8.0)
    assert len(limiter) == 1
    assert all(limiter.admit("c", 0.0, limit=0, window_s=8.0) is None for _ in range(10))


async def test_register_creates_a_machine_with_the_agents_report(store: MemoryStore) -> None:
    report = Register(
        hostname="Web-1.Example.com",
        ips=["10.0.0.5", "10.0.0.5"],
        machine_kind="physical",
        labels={"zone": "b"},
        cpus=8,
        memory_bytes=2**30,
        version="0.1.0",
    )
    ops, machine_id = plan_register(store.view(), report, address="10.0.0.5", now=FIXED_NOW, new_id=Ids("m"))
    assert machine_id == "m-1" and isinstance(ops[0], Create)
    await store.commit(ops)
    created = store.view().get(Machine, machine_id)
    assert created is not None
    assert created.hostname == "web-1.example.com" and created.ips == ["10.0.0.5"]
    assert created.machine_kind == "physical" and created.labels == {"zone": "b"}
    assert created.agent == AgentStatus(state="ready", address="10.0.0.5", version="0.1.0", since=FIXED_NOW)


async def test_register_updates_resources_but_keeps_what_operators_own(store: MemoryStore) -> None:
    await store.commit(
        [Create(machine("web-1", id="m1", labels={"tier": "front"}, ips=["10.0.0.1"], cpus=2))]
    )
    report = Register(hostname="web-1", labels={"tier": "agent-says"}, cpus=4, machine_kind="physical")
    later = FIXED_NOW + timedelta(minutes=1)
    ops, machine_id = plan_register(store.view(), report, address="", now=later, new_id=Ids("x"))
    assert machine_id == "m1" and isinstance(ops[0], Update)
    await store.commit(ops)
    updated = store.view().get(Machine, "m1")
    assert updated is not None
    assert updated.labels == {"tier": "front"} and updated.machine_kind == "virtual"
    assert updated.cpus == 4 and updated.ips == ["10.0.0.1"]  # an empty report keeps the stored ips
    assert updated.agent is not None and updated.agent.state == "ready" and updated.agent.since == later
    # Registering again while ready keeps `since`.
    ops, _ = plan_register(
        store.view(), report, address="", now=later + timedelta(minutes=1), new_id=Ids("x")
    )
    await store.commit(ops)
    again = store.view().get(Machine, "m1")
    assert again is not None and again.agent is not None and again.agent.since == later


def test_register_refuses_a_malformed_report() -> None:
    view = MemoryStore().view()
    with pytest.raises(InvalidInput):
        plan_register(view, Register(hostname="not a host"), address="", now=FIXED_NOW, new_id=Ids())
    with pytest.raises(InvalidInput):
        plan_register(view, Register(hostname="ok", ips=["nope"]), address="", now=FIXED_NOW, new_id=Ids())


async def test_mark_unknown_skips_down_nodes_and_machines_without_agents(store: MemoryStore) -> None:
    ready = AgentStatus(state="ready", since=FIXED_NOW)
    await store.commit(
        [
            Create(machine("a", id="a", agent=ready)),
            Create(machine("b", id="b", agent=AgentStatus(state="down"))),
            Create(machine("c", id="c")),
            Create(machine("d", id="d", agent=AgentStatus(state="unknown"))),
        ]
    )
    later = FIXED_NOW + timedelta(hours=1)
    ops, ids = plan_mark_unknown(store.view(), later)
    assert ids == ["a", "d"]
    assert [op.object.id for op in ops] == ["a", "d"]
    await store.commit(ops)
    a = store.view().get(Machine, "a")
    assert a is not None and a.agent is not None and a.agent.state == "unknown" and a.agent.since == later
    assert plan_agent_state(store.view(), ["a", "c", "gone"], "unknown", a.agent.message, later) == []


# ---- task status ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stored", "reported", "verdict"),
    [
        (S.ASSIGNED, S.ACCEPTED, Verdict.ACCEPT),
        (S.ASSIGNED, S.RUNNING, Verdict.ACCEPT),  # skipping states is fine
        (S.RUNNING, S.STARTING, Verdict.BACKWARD),
        (S.RUNNING, S.RUNNING, Verdict.DUPLICATE),
        (S.FAILED, S.FAILED, Verdict.DUPLICATE),
        (S.COMPLETE, S.FAILED, Verdict.ENDED),
        (S.ASSIGNED, S.ASSIGNED, Verdict.MANAGER_STATE),
        (S.ASSIGNED, S.PENDING, Verdict.MANAGER_STATE),
    ],
)
def test_status_verdicts_against_the_stored_state(
    stored: TaskState, reported: TaskState, verdict: Verdict
) -> None:
    assert check_status(task(state=stored), "m1", status(reported)) is verdict


def test_status_from_the_wrong_node_or_for_an_unknown_task_is_rejected() -> None:
    assert check_status(task(), "m2", status(S.RUNNING)) is Verdict.NOT_ON_NODE
    assert check_status(task(machine_id=None), "m1", status(S.RUNNING)) is Verdict.NOT_ON_NODE
    assert check_status(None, "m1", status(S.RUNNING)) is Verdict.UNKNOWN_TASK
    assert Verdict.NOT_ON_NODE.rejected and Verdict.UNKNOWN_TASK.rejected and Verdict.MANAGER_STATE.rejected
    assert not Verdict.BACKWARD.rejected and not Verdict.DUPLICATE.rejected


def test_status_behind_or_equal_to_a_queued_one_is_stale_or_waits() -> None:
    queued = status(S.RUNNING)
    assert check_status(task(), "m1", status(S.STARTING), queued=queued) is Verdict.STALE
    assert check_status(task(), "m1", status(S.RUNNING), queued=queued) is Verdict.QUEUED
    assert check_status(task(), "m1", status(S.COMPLETE), queued=queued) is Verdict.ACCEPT


async def _world(store: MemoryStore, *tasks: Task) -> None:
    tree = node("svc-node", id="n1")
    service = Service(
        id="svc",
        created_at=FIXED_NOW,
        updated_at=FIXED_NOW,
        name="web",
        node_id="n1",
        task=TaskSpec(command=["x"]),
    )
    await store.commit(
        [Create(tree), Create(service), Create(machine("m1", id="m1")), Create(machine("m2", id="m2"))]
    )
    await store.commit([Create(t) for t in tasks])


def upd(task_id: str, state: TaskState) -> TaskStatusUpdate:
    return TaskStatusUpdate(task_id=task_id, status=status(state))


async def test_batcher_queues_forward_moves_and_says_who_waits(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"), task("t3", machine_id="m2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    view = store.view()
    outcome = batcher.offer(
        view,
        "m1",
        [upd("t1", S.RUNNING), upd("t2", S.ASSIGNED), upd("t3", S.RUNNING), upd("nope", S.RUNNING)],
        "r1",
    )
    assert outcome.waiting
    assert [v for _, v in outcome.verdicts] == [
        Verdict.ACCEPT,
        Verdict.MANAGER_STATE,
        Verdict.NOT_ON_NODE,
        Verdict.UNKNOWN_TASK,
    ]
    assert len(batcher) == 1
    # A retry of the same report waits for the same write; an older state is stale and answered at once.
    assert batcher.offer(view, "m1", [upd("t1", S.RUNNING)], "r1-retry").waiting
    stale = batcher.offer(view, "m1", [upd("t1", S.STARTING)], "r0")
    assert stale.verdicts == [("t1", Verdict.STALE)] and not stale.waiting
    # A newer state replaces the queued one.
    assert batcher.offer(view, "m1", [upd("t1", S.COMPLETE)], "r2").waiting
    assert batcher.queued("t1") == status(S.COMPLETE) and len(batcher) == 1

    batch = batcher.take()
    assert len(batcher) == 0 and batcher.queued("t1") == status(S.COMPLETE)
    # While the batch is in flight, a retry waits for it; something new starts the next batch.
    assert batcher.offer(view, "m1", [upd("t1", S.COMPLETE)], "r2-retry").waiting
    assert batcher.offer(view, "m1", [upd("t2", S.ACCEPTED)], "r3").waiting
    ops, dropped = plan_status_flush(store.view(), batch, FIXED_NOW)
    assert dropped == {} and len(ops) == 1
    await store.commit(ops)
    assert batcher.settle(True) == ["r1", "r1-retry", "r2", "r2-retry"]
    stored = store.view().get(Task, "t1")
    assert stored is not None and stored.status.state == S.COMPLETE
    assert list(batcher.take()) == ["t2"]
    assert batcher.settle(True) == ["r3"]


async def test_batcher_puts_a_failed_batch_back_behind_newer_states(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    view = store.view()
    batcher.offer(view, "m1", [upd("t1", S.STARTING), upd("t2", S.RUNNING)], "r1")
    batcher.take()
    batcher.offer(view, "m1", [upd("t1", S.RUNNING)], "r2")
    assert batcher.settle(False) == []
    assert batcher.queued("t1") == status(S.RUNNING) and batcher.queued("t2") == status(S.RUNNING)
    batch = batcher.take()
    assert set(batch) == {"t1", "t2"}
    assert batcher.settle(True) == ["r1", "r2"]


async def test_flush_drops_what_the_store_has_moved_past(store: MemoryStore) -> None:
    await _world(store, task("t1"), task("t2"))
    batcher: StatusBatcher[str] = StatusBatcher()
    batcher.offer(store.view(), "m1", [upd("t1", S.STARTING), upd("t2", S.RUNNING)], "r1")
    batch = batcher.take()
    # Meanwhile t1 got further (another write) and t2 was deleted.
    t1 = store.view().get(Task, "t1")
    t2 = store.view().get(Task, "t2")
    assert t1 is not None and t2 is not None
    await store.commit([Update(msgspec.structs.replace(t1, status=status(S.RUNNING)))])
    await store.commit([Delete(t2)])
    ops, dropped = plan_status_flush(store.view(), batch, FIXED_NOW)
    assert ops == [] and dropped == {"t1": Verdict.BACKWARD, "t2": Verdict.UNKNOWN_TASK}


# ---- assignments ----------------------------------------------------------------------------------
def test_agent_knows_assigned_tasks_until_they_ended_and_should_stop() -> None:
    assert agent_should_know(task(state=S.ASSIGNED), "m1")
    assert agent_should_know(task(state=S.RUNNING, desired=S.SHUTDOWN), "m1")  # must stop it
    assert agent_should_know(task(state=S.FAILED), "m1")  # ended, but the manager has not decided yet
    assert not agent_should_know(task(state=S.FAILED, desired=S.SHUTDOWN), "m1")
    assert not agent_should_know(task(state=S.PENDING), "m1")
    assert not agent_should_know(task(), "m2")


def ev(kind: str, obj: Any, revision: int = 1) -> Event:
    return Event(revision=revision, type=kind, object=obj)  # type: ignore[arg-type]


def test_assignment_set_full_then_increments() -> None:
    aset = AssignmentSet("m1")
    full = aset.full([task("b"), task("a"), task("p", state=S.PENDING), task("o", machine_id="m2")])
    assert full.full and full.sequence == 1 and [t.id for t in full.updated] == ["a", "b"]
    assert aset.increment() is None

    assert aset.apply(ev("updated", task("c")))  # newly assigned
    assert aset.apply(ev("updated", task("a", desired=S.SHUTDOWN)))  # the manager wants it stopped
    assert not aset.apply(ev("updated", task("x", state=S.PENDING)))  # not assigned yet
    assert not aset.apply(ev("created", machine("m1")))  # not a task
    message = aset.increment()
    assert message is not None and not message.full and message.sequence == 2
    assert [t.id for t in message.updated] == ["c", "a"] and message.removed == []

    assert aset.apply(ev("deleted", task("b")))
    assert not aset.apply(ev("deleted", task("never-known")))
    message = aset.increment()
    assert (
        message is not None and message.sequence == 3 and message.removed == ["b"] and message.updated == []
    )


def test_status_only_changes_from_the_agent_are_not_echoed() -> None:
    aset = AssignmentSet("m1")
    aset.full([task("a")])
    assert not aset.apply(ev("updated", task("a", state=S.RUNNING, version=7)))
    assert aset.increment() is None
    # Ended and asked to shut down: the agent may forget it.
    assert aset.apply(ev("updated", task("a", state=S.SHUTDOWN, desired=S.SHUTDOWN)))
    message = aset.increment()
    assert message is not None and message.removed == ["a"]


def test_a_task_moving_to_another_machine_is_removed() -> None:
    aset = AssignmentSet("m1")
    aset.full([task("a")])
    assert aset.apply(ev("updated", task("a", machine_id="m2")))
    message = aset.increment()
    assert message is not None and message.removed == ["a"] and len(aset) == 0


def test_cluster_settings_default_when_none_are_stored() -> None:
    settings = cluster_settings(MemoryStore().view())
    assert settings.heartbeat_period_s == 5.0 and settings.registration_limit == 3


def test_deadlines_postpone_moves_every_deadline():
    deadlines = Deadlines()
    deadlines.register("a", 0.0, 15.0)
    deadlines.register("b", 0.0, 20.0)
    deadlines.postpone(10.0)
    assert deadlines.expired(24.0) == []
    assert deadlines.expired(25.0) == ["a"]
    assert deadlines.due("b") == 30.0


def test_a_health_change_in_the_same_state_is_news_only_if_later():
    running = msgspec.structs.replace(status(S.RUNNING), health="starting")
    stored = msgspec.structs.replace(task(state=S.RUNNING), status=running)
    later = msgspec.structs.replace(
        running, health="healthy", timestamp=running.timestamp + timedelta(seconds=1)
    )
    earlier = msgspec.structs.replace(
        running, health="healthy", timestamp=running.timestamp - timedelta(seconds=1)
    )
    assert check_status(stored, "m1", later) is Verdict.ACCEPT
    assert check_status(stored, "m1", running) is Verdict.DUPLICATE
    assert check_status(stored, "m1", earlier) is Verdict.BACKWARD
    between = msgspec.structs.replace(
        running, health="unhealthy", timestamp=running.timestamp + timedelta(seconds=0.5)
    )
    assert check_status(stored, "m1", between, queued=later) is Verdict.STALE
    assert check_status(stored, "m1", later, queued=later) is Verdict.QUEUED
