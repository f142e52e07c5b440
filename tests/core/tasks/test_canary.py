"""Canary releases in the core: the size of a canary and its bad input, the judge (examples and a
Hypothesis property), and a canary inside the reconciler on the simulated cluster of rollout_sim: only
its slots change, a restart elsewhere keeps the old spec, promotion rolls the rest, an abort (by the
judge, by hand, or by a crashing canary task) puts the old spec back."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.core.tasks.rollout_sim import T0, Sim, spec

from treeherd.core.tasks.canary import (
    LATENCY_FLOOR_MS,
    LATENCY_MIN_REQUESTS,
    aborted,
    canary_size,
    canary_started,
    judge,
    promoted,
)
from treeherd.model.errors import InvalidInput
from treeherd.model.services import CanaryPolicy, TaskSpec, UpdatePolicy, VersionFigures
from treeherd.model.states import TaskState

OLD = spec("old")
NEW = spec("new")
DONE = ("completed", "paused", "rollback_completed", "rollback_paused")


def figures(version: int, requests: int, errors: int = 0, p99: float | None = 5.0) -> VersionFigures:
    return VersionFigures(
        spec_version=version,
        requests=requests,
        errors=errors,
        availability=None if not requests else (requests - errors) / requests,
        p99_ms=p99 if requests else None,
    )


# ---- size and bad input --------------------------------------------------------------------------


def _sim_service(replicas: int, mode: str = "replicated"):
    return Sim(replicas, OLD, UpdatePolicy(), mode=mode, machines=2).service


@pytest.mark.parametrize(
    ("replicas", "policy", "size"),
    [
        (4, CanaryPolicy(tasks=1), 1),
        (4, CanaryPolicy(tasks=3), 3),
        (10, CanaryPolicy(percent=25), 2),  # rounded down
        (4, CanaryPolicy(percent=1), 1),  # at least one
        (3, CanaryPolicy(percent=50), 1),
    ],
)
def test_canary_size(replicas: int, policy: CanaryPolicy, size: int) -> None:
    assert canary_size(_sim_service(replicas), policy) == size


@pytest.mark.parametrize(
    ("replicas", "mode", "policy", "field", "words"),
    [
        (4, "replicated", CanaryPolicy(tasks=5), "canary.tasks", "leaves no task"),
        (4, "replicated", CanaryPolicy(tasks=4), "canary.tasks", "leaves no task"),
        (4, "replicated", CanaryPolicy(percent=100), "canary.percent", "leaves no task"),
        (1, "replicated", CanaryPolicy(tasks=1), "canary.tasks", "1 replica)"),
        (4, "replicated", CanaryPolicy(), "canary", "number of tasks or as a percentage"),
        (4, "replicated", CanaryPolicy(tasks=1, percent=10), "canary", "number of tasks"),
        (0, "global", CanaryPolicy(tasks=1), "canary", "is global"),
    ],
)
def test_canaries_that_cannot_be(
    replicas: int, mode: str, policy: CanaryPolicy, field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        canary_size(_sim_service(replicas, mode), policy)
    assert caught.value.field == field and words in caught.value.detail


# ---- the judge -----------------------------------------------------------------------------------

POLICY = CanaryPolicy(tasks=1, window_s=60, margin=0.5, min_requests=100, latency_factor=1.5)


def test_a_canary_failing_a_fifth_of_its_requests_is_aborted_with_the_figures() -> None:
    verdict = judge(POLICY, figures(1, 1000), figures(2, 250, errors=50), serving_s=10)
    assert verdict.action == "abort"
    assert "availability 20.00 points under" in verdict.reason
    assert "canary (spec 2): 250 requests, 50 5xx, availability 80.00%" in verdict.reason
    assert "old (spec 1): 1000 requests, 0 5xx, availability 100.00%" in verdict.reason
    assert verdict.new.errors == 50 and verdict.old.requests == 1000


def test_too_few_requests_change_nothing() -> None:
    verdict = judge(POLICY, figures(1, 1000), figures(2, 99, errors=99), serving_s=600)
    assert verdict.action == "wait" and "waiting for 100 requests" in verdict.reason


def test_within_the_margin_the_canary_waits_then_passes() -> None:
    old, new = figures(1, 10_000, errors=10), figures(2, 1000, errors=5)  # 99.9% vs 99.5%: 0.4 points
    assert judge(POLICY, old, new, serving_s=30).action == "wait"
    passed = judge(POLICY, old, new, serving_s=60)
    assert passed.action == "wait" and "waiting for service promote" in passed.reason
    auto = msgspec.structs.replace(POLICY, auto_promote=True)
    assert judge(auto, old, new, serving_s=60).action == "promote"
    assert judge(auto, old, new, serving_s=59).action == "wait"


def test_a_slow_canary_is_aborted_and_fast_latencies_are_not_told_apart() -> None:
    slow = judge(POLICY, figures(1, 1000, p99=40), figures(2, 500, p99=61), serving_s=5)
    assert slow.action == "abort" and "p99 latency 61 ms" in slow.reason
    assert judge(POLICY, figures(1, 1000, p99=40), figures(2, 500, p99=59), serving_s=5).action == "wait"
    # 1 ms against 15 ms: within the histogram's resolution, under the floor.
    fast = judge(POLICY, figures(1, 1000, p99=1), figures(2, 500, p99=LATENCY_FLOOR_MS * 1.5), serving_s=5)
    assert fast.action == "wait"
    # A p99 of 200 requests is about their slowest two: not judged on yet.
    few = judge(POLICY, figures(1, 1000, p99=40), figures(2, 200, p99=400), serving_s=5)
    assert few.action == "wait"


def test_without_old_requests_the_canary_is_held_to_every_request() -> None:
    verdict = judge(POLICY, figures(1, 0), figures(2, 200, errors=2), serving_s=5)
    assert verdict.action == "abort"


windows = st.integers(min_value=0, max_value=100_000)


@given(
    old_requests=windows,
    old_errors=windows,
    new_requests=windows,
    new_errors=windows,
    old_p99=st.floats(min_value=0, max_value=60_000),
    new_p99=st.floats(min_value=0, max_value=60_000),
    serving_s=st.floats(min_value=0, max_value=1000),
    window_s=st.floats(min_value=1, max_value=600),
    margin=st.floats(min_value=0, max_value=100),
    min_requests=st.integers(min_value=1, max_value=1000),
    factor=st.floats(min_value=1, max_value=10),
    auto=st.booleans(),
)
def test_the_judge_acts_only_on_enough_figures(
    old_requests: int,
    old_errors: int,
    new_requests: int,
    new_errors: int,
    old_p99: float,
    new_p99: float,
    serving_s: float,
    window_s: float,
    margin: float,
    min_requests: int,
    factor: float,
    auto: bool,
) -> None:
    """Never a verdict on fewer than min_requests; an abort only when availability lost more than the
    margin or p99 grew past the factor; a promotion only with auto_promote, after the window, and on
    figures that do not abort; and a canary as good as the old tasks is never aborted."""
    policy = CanaryPolicy(
        tasks=1,
        window_s=window_s,
        margin=margin,
        min_requests=min_requests,
        latency_factor=factor,
        auto_promote=auto,
    )
    old = figures(1, old_requests, min(old_errors, old_requests), old_p99)
    new = figures(2, new_requests, min(new_errors, new_requests), new_p99)
    verdict = judge(policy, old, new, serving_s)
    if new.requests < min_requests:
        assert verdict.action == "wait"
        return
    assert new.availability is not None
    baseline = old.availability if old.requests and old.availability is not None else 1.0
    worse = (baseline - new.availability) * 100 > margin
    slower = (
        min(old.requests, new.requests) >= LATENCY_MIN_REQUESTS
        and old.p99_ms is not None
        and new_p99 > factor * max(old.p99_ms, LATENCY_FLOOR_MS)
    )
    assert (verdict.action == "abort") == (worse or slower)
    if verdict.action == "promote":
        assert auto and serving_s >= window_s
    if auto and serving_s >= window_s and not (worse or slower):
        assert verdict.action == "promote"
    # The old tasks' own figures, measured on the canary, never abort it.
    same = judge(policy, old, msgspec.structs.replace(old, spec_version=2), serving_s)
    if old.requests >= min_requests:
        assert same.action != "abort"


# ---- a canary in the reconciler ------------------------------------------------------------------


def start_canary(sim: Sim, new: TaskSpec, policy: CanaryPolicy) -> None:
    """What `service update --canary` writes."""
    sim.update(new)
    size = canary_size(sim.service, policy)
    sim.service = msgspec.structs.replace(sim.service, update_status=canary_started(policy, size, sim.now))


def run(sim: Sim, until: tuple[str, ...] = DONE, ticks: int = 200) -> None:
    for _ in range(ticks):
        if sim.state() in until:
            return
        sim.tick()
    raise AssertionError(f"no end after {ticks} ticks: {sim.service.update_status}")


def serving(sim: Sim) -> bool:
    status = sim.service.update_status
    return status is not None and status.canary is not None and status.canary.serving_at is not None


def wait_serving(sim: Sim, ticks: int = 50) -> None:
    for _ in range(ticks):
        if serving(sim):
            return
        sim.tick()
    raise AssertionError(f"the canary never served: {sim.service.update_status}")


def by_spec(sim: Sim) -> dict[str, list[str]]:
    return {key: [s.command[0] for s in specs] for key, specs in sim.specs_by_slot().items()}


@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_a_canary_replaces_only_its_slots_then_promotion_rolls_the_rest(order: str) -> None:
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1, order=order))
    start_canary(sim, NEW, CanaryPolicy(tasks=1))
    wait_serving(sim)
    for _ in range(10):
        sim.tick()
    assert by_spec(sim) == {"1": ["new"], "2": ["old"], "3": ["old"], "4": ["old"]}
    status = sim.service.update_status
    assert status is not None and status.state == "canary" and status.canary is not None
    assert status.canary.slots == ["1"] and "canary on 1 of 4 slots (spec 2)" in status.message
    sim.service = promoted(sim.service, sim.now, "by hand")
    run(sim)
    assert sim.state() == "completed" and all(specs == ["new"] for specs in by_spec(sim).values())
    final = sim.service.update_status
    assert final is not None and final.canary is not None and final.canary.verdict == "promoted: by hand"


def test_a_restart_outside_the_canary_keeps_the_old_spec() -> None:
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    start_canary(sim, NEW, CanaryPolicy(tasks=2))
    wait_serving(sim)
    # The task of slot 4 (old spec) crashes: its replacement is of the old spec too.
    crashed = next(t for t in sim.running() if t.slot == 4)
    sim.tasks[crashed.id] = msgspec.structs.replace(
        crashed, status=msgspec.structs.replace(crashed.status, state=TaskState.FAILED, timestamp=sim.now)
    )
    for _ in range(10):
        sim.tick()
    assert by_spec(sim) == {"1": ["new"], "2": ["new"], "3": ["old"], "4": ["old"]}
    replacement = next(t for t in sim.running() if t.slot == 4)
    assert replacement.id != crashed.id and replacement.spec_version == 1


def test_an_abort_puts_the_old_spec_back_on_the_canary_slots() -> None:
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    start_canary(sim, NEW, CanaryPolicy(tasks=1))
    wait_serving(sim)
    verdict = judge(POLICY, figures(1, 1000), figures(2, 250, errors=50), serving_s=10)
    sim.service = aborted(sim.service, sim.now, verdict.reason, verdict)
    status = sim.service.update_status
    assert status is not None and status.state == "rollback_started"
    assert status.message.startswith("canary aborted: availability 20.00 points under")
    run(sim)
    assert sim.state() == "rollback_completed" and all(specs == ["old"] for specs in by_spec(sim).values())
    final = sim.service.update_status
    assert final is not None and final.message == "canary abort completed"
    assert final.canary is not None and final.canary.new is not None and final.canary.new.errors == 50


def test_a_canary_task_that_ends_aborts_the_canary() -> None:
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    sim.bad = {"new"}
    start_canary(sim, NEW, CanaryPolicy(percent=25))
    run(sim)
    assert sim.state() == "rollback_completed"
    status = sim.service.update_status
    assert status is not None and status.canary is not None
    assert status.canary.verdict.startswith("aborted: canary task") and "slot 1 ended (failed" in (
        status.canary.verdict
    )
    assert all(specs == ["old"] for specs in by_spec(sim).values())


def test_the_canary_prefers_slots_that_are_down() -> None:
    sim = Sim(4, OLD, UpdatePolicy(parallelism=1, monitor_s=1))
    down = next(t for t in sim.running() if t.slot == 3)
    sim.tasks[down.id] = msgspec.structs.replace(
        down, status=msgspec.structs.replace(down.status, state=TaskState.STARTING, timestamp=T0)
    )
    start_canary(sim, NEW, CanaryPolicy(tasks=1))
    sim.tick()
    status = sim.service.update_status
    assert status is not None and status.canary is not None and status.canary.slots == ["3"]
