"""The health state machine: starting, healthy after a pass, unhealthy after `retries` failures in a
row, failures in the start period not counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.tasks.health import HealthState, observe
from treeherd.model.discovery import HealthCheck

CHECK = HealthCheck(kind="tcp", retries=3, start_period_s=10.0)


def run(results: list[tuple[bool, float]], check: HealthCheck = CHECK) -> HealthState:
    state = HealthState()
    for passed, at in results:
        state = observe(state, check, passed=passed, since_start_s=at)
    return state


def test_starting_until_a_pass_then_healthy():
    assert HealthState().health == "starting"
    assert run([(True, 1.0)]).health == "healthy"


def test_failures_in_the_start_period_do_not_count():
    assert run([(False, 1.0)] * 10).health == "starting"
    assert run([(False, 1.0)] * 10 + [(False, 11.0)] * 2).health == "starting"
    assert run([(False, 11.0)] * 3).health == "unhealthy"


def test_retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals():
    healthy_then = [(True, 11.0), (False, 12.0), (False, 13.0)]
    assert run(healthy_then).health == "healthy"
    assert run([*healthy_then, (False, 14.0)]).health == "unhealthy"
    assert run([*healthy_then, (True, 14.0), (False, 15.0), (False, 16.0)]).health == "healthy"
    assert run([*healthy_then, (False, 14.0), (True, 15.0)]).health == "healthy"


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100)), max_size=30))
def test_health_follows_the_last_results(results):
    state = run(results)
    if results and results[-1][0]:
        assert state.health == "healthy"
    tail = 0
    for passed, _ in reversed(results):
        if passed:
            break
        tail += 1
    if state.health == "unhealthy":
        assert tail >= 1 and state.failures >= CHECK.retries
