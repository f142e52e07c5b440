"""The updater (core.tasks.rollout) inside the reconciler, on a simulated cluster: batches, the two
orders, the monitor window, the failure actions, rollback, resume; then Hypothesis properties over
random policies, sizes and failures."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.tasks.rollout_sim import Sim, spec

from treeherd.model.services import UpdatePolicy, UpdateStatus

OLD = spec("old")
NEW = spec("new")
DONE = ("completed", "paused", "rollback_completed", "rollback_paused")


def run(sim: Sim, ticks: int = 200, until: tuple[str, ...] = DONE) -> None:
    for _ in range(ticks):
        if sim.state() in until:
            return
        sim.tick()
    raise AssertionError(f"no end after {ticks} ticks: {sim.service.update_status}")


def on_spec(sim: Sim, wanted) -> bool:
    return all(specs == [wanted] for specs in sim.specs_by_slot().values())


def test_stop_first_replaces_one_slot_at_a_time_and_completes():
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=2))
    sim.update(NEW)
    sim.watch()
    run(sim)
    assert sim.state() == "completed" and on_spec(sim, NEW)
    assert sim.most_down == 1
    status = sim.service.update_status
    assert status is not None and status.completed_at is not None and status.message == "update completed"


def test_the_next_batch_waits_out_the_monitor_window_and_the_delay():
    sim = Sim(2, OLD, UpdatePolicy(parallelism=1, monitor_s=3, delay_s=5))
    sim.update(NEW)
    sim.tick()  # slot 1: old stopped, new created
    sim.tick()  # new one running
    started = sim.now
    while not any(t.spec == NEW for t in sim.live() if t.slot == 2):
        sim.tick()
    # Running for 3 s, then 5 s of delay, before slot 2 is touched.
    assert (sim.now - started).total_seconds() >= 8


def test_start_first_keeps_the_old_task_until_the_new_one_is_healthy():
    old, new = spec("old", health=True), spec("new", health=True)
    sim = Sim(3, old, UpdatePolicy(parallelism=1, order="start-first", monitor_s=1))
    sim.update(new)
    sim.tick()
    slot1 = [t for t in sim.live() if t.slot == 1]
    assert sorted(t.spec.command[0] for t in slot1) == ["new", "old"]
    sim.watch()
    run(sim)
    assert sim.fewest_ready == 3 and sim.state() == "completed" and on_spec(sim, new)


def test_a_new_task_that_fails_pauses_the_update_after_the_first_batch():
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.bad = {"new"}
    sim.update(NEW)
    run(sim)
    assert sim.state() == "paused"
    status = sim.service.update_status
    assert status is not None and "slot 1 ended (failed, exit code 1)" in status.message
    for _ in range(10):  # paused: nothing more is replaced
        sim.tick()
    old_slots = sorted(t.slot for t in sim.running() if t.spec == OLD)
    assert old_slots == [2, 3, 4]


def test_resume_after_a_pause_goes_on_from_the_current_state():
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.bad = {"new"}
    sim.update(NEW)
    run(sim)
    assert sim.state() == "paused"
    sim.bad = set()  # whatever made it fail is fixed outside
    sim.service = msgspec.structs.replace(
        sim.service, update_status=UpdateStatus(state="updating", started_at=sim.now)
    )
    run(sim)
    assert sim.state() == "completed" and on_spec(sim, NEW)


def test_failure_action_rollback_returns_to_the_old_spec_by_itself():
    sim = Sim(4, OLD, UpdatePolicy(parallelism=2, monitor_s=1, failure_action="rollback"))
    sim.bad = {"new"}
    sim.update(NEW)
    run(sim, until=("rollback_completed", "rollback_paused", "paused", "completed"))
    assert sim.state() == "rollback_completed"
    assert on_spec(sim, OLD) and sim.service.task == OLD and sim.service.previous_task == NEW
    status = sim.service.update_status
    assert status is not None and status.message == "rollback completed"


def test_failure_action_rollback_pauses_when_the_previous_spec_no_longer_validates():
    sim = Sim(4, OLD, UpdatePolicy(parallelism=2, monitor_s=1, failure_action="rollback"))
    sim.bad = {"new"}
    sim.update(NEW)
    sim.rollback_refused = "conflicts names an unknown service 'db'"
    run(sim, until=("rollback_started", "rollback_paused", "paused", "completed"))
    status = sim.service.update_status
    assert status is not None and status.state == "paused"
    assert "not rolled back: conflicts names an unknown service 'db'" in status.message
    assert sim.service.task == NEW and sim.service.previous_task == OLD


def test_a_failure_ratio_tolerates_that_many_failed_slots():
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1, max_failure_ratio=0.25))
    sim.bad = {"new"}
    sim.failing_slots = {"2"}
    sim.update(NEW)
    run(sim)
    assert sim.state() == "completed"
    status = sim.service.update_status
    assert status is not None and status.failed == ["2"] and "1 of 4 slots failed" in status.message


def test_parallelism_zero_replaces_every_slot_at_once():
    sim = Sim(5, OLD, UpdatePolicy(parallelism=0, monitor_s=1))
    sim.update(NEW)
    sim.watch()
    run(sim)
    assert sim.most_down == 5
    assert sim.state() == "completed" and on_spec(sim, NEW)


def test_a_global_service_is_rolled_machine_by_machine():
    sim = Sim(0, OLD, UpdatePolicy(parallelism=1, monitor_s=1), mode="global", machines=3)
    sim.update(NEW)
    sim.watch()
    run(sim)
    assert sim.most_down == 1 and on_spec(sim, NEW)


# ---- properties ----------------------------------------------------------------------------------

policies = st.builds(
    UpdatePolicy,
    parallelism=st.integers(0, 3),
    delay_s=st.sampled_from([0.0, 1.0, 2.0]),
    order=st.sampled_from(["stop-first", "start-first"]),
    monitor_s=st.sampled_from([0.0, 1.0, 3.0]),
    failure_action=st.sampled_from(["pause", "continue", "rollback"]),
    max_failure_ratio=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    replicas=st.integers(1, 6),
    policy=policies,
    health=st.booleans(),
    failing=st.sets(st.integers(1, 6)),
    crash_after=st.sampled_from([None, 1.0, 2.0]),
    endpoints=st.booleans(),
)
def test_rolling_update_properties(replicas, policy, health, failing, crash_after, endpoints):
    """With stop-first never more than `parallelism` slots without a running task; with start-first
    (bad tasks failing as they start) never fewer than `replicas` ready tasks (running, and healthy); every slot reaches the
    new spec, or the update pauses or rolls back; a rollback ends on the previous spec everywhere; a
    task that is an endpoint is deregistered before it is told to stop (with `endpoints`)."""
    old, new = spec("old", health=health), spec("new", health=health)
    rollback = msgspec.structs.replace(policy, failure_action="pause")
    sim = Sim(replicas, old, policy, rollback, endpoints=endpoints)
    failing_slots = {str(n) for n in failing if n <= replicas}
    if failing_slots:
        sim.bad = {"new"}
        sim.failing_slots = failing_slots
        sim.crash_after_s = crash_after
    assert len(sim.running()) == replicas
    sim.update(new)
    sim.watch()
    for _ in range(300):
        sim.tick()
        if policy.order == "stop-first" and policy.parallelism:
            assert sim.most_down <= policy.parallelism, sim.service.update_status
        if policy.order == "start-first" and crash_after is None:
            assert sim.fewest_ready is not None and sim.fewest_ready >= replicas
        if sim.state() in DONE:
            break
    state = sim.state()
    assert state in DONE, sim.service.update_status
    for _ in range(int(policy.monitor_s) + 5):
        sim.tick()  # let the last stops and restarts land
    status = sim.service.update_status
    assert status is not None
    if not failing_slots:
        assert state == "completed" and on_spec(sim, new)
    elif state == "completed":
        # Failures within the ratio, or the action is continue: every slot that did not fail is new.
        for key, specs in sim.specs_by_slot().items():
            assert key in status.failed or specs == [new], (key, specs)
    elif state == "rollback_completed":
        assert sim.service.task == old and on_spec(sim, old)
    else:
        assert state in ("paused", "rollback_paused") and status.failed


def test_stop_first_waits_while_other_slots_are_down():
    """Scaled up in the same change: the two new slots are down while they start, so no old task is
    stopped before they run (parallelism 1)."""
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.update(NEW)
    sim.service = msgspec.structs.replace(sim.service, replicas=5)
    sim.reconcile()
    assert sorted(t.slot for t in sim.live() if t.spec == NEW) == [4, 5]
    assert sorted(t.slot for t in sim.live() if t.spec == OLD) == [1, 2, 3]  # none stopped yet
    sim.watch()
    run(sim)
    assert sim.state() == "completed" and on_spec(sim, NEW) and sim.most_down <= 2


def test_a_slot_down_before_the_update_is_replaced_first():
    sim = Sim(3, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.bad = {"old"}
    sim.failing_slots = {"3"}  # slot 3's old task crashes, again and again
    sim.crash_after_s = 0
    sim.tick()
    while any(t.slot == 3 for t in sim.running()):
        sim.tick()
    sim.update(NEW)
    sim.reconcile()
    assert [t.slot for t in sim.live() if t.spec == NEW] == [3]
    assert sorted(t.slot for t in sim.running() if t.spec == OLD) == [1, 2]
    run(sim)
    assert sim.state() == "completed" and on_spec(sim, NEW)
