"""The dispatcher's heartbeat decisions: the period an agent is told, its grace, the deadlines
watched, and the cluster settings they read."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dispatch_support import DEFAULTS

from treeherd.core.tasks.dispatch.heartbeats import Deadlines, heartbeat_period, heartbeat_timeout
from treeherd.core.tasks.dispatch.settings import cluster_settings
from treeherd.store.memory import MemoryStore


def test_period_adds_the_drawn_share_of_epsilon() -> None:
    assert heartbeat_period(DEFAULTS, 0.0) == 5.0
    assert heartbeat_period(DEFAULTS, 0.5) == 5.25
    assert heartbeat_period(DEFAULTS, 1.0) == 5.5
    assert heartbeat_period(DEFAULTS, 7.0) == 5.5  # a draw out of range is clamped


def test_timeout_is_the_told_period_then_the_grace_less_one_base_periods_doubled_when_unknown() -> None:
    assert heartbeat_timeout(5.0, DEFAULTS) == 15.0
    assert heartbeat_timeout(5.5, DEFAULTS) == pytest.approx(15.5)  # the epsilon counts once
    assert heartbeat_timeout(5.0, DEFAULTS, unknown=True) == 30.0
    custom = msgspec.structs.replace(DEFAULTS, heartbeat_period_s=1.0, heartbeat_grace_multiplier=4.0)
    assert heartbeat_timeout(heartbeat_period(custom, 0.0), custom) == 4.0
    once = msgspec.structs.replace(DEFAULTS, heartbeat_grace_multiplier=1.0)
    assert heartbeat_timeout(5.3, once) == 5.3  # a grace of one: the told period alone


@given(
    base=st.floats(0.1, 60.0),
    epsilon=st.floats(0.0, 60.0),
    multiplier=st.floats(1.0, 100.0),
    draw=st.floats(0.0, 1.0),
)
def test_timeout_covers_the_told_period_and_adds_at_most_one_epsilon(
    base: float, epsilon: float, multiplier: float, draw: float
) -> None:
    settings = msgspec.structs.replace(
        DEFAULTS, heartbeat_period_s=base, heartbeat_epsilon_s=epsilon, heartbeat_grace_multiplier=multiplier
    )
    told = heartbeat_period(settings, draw)
    timeout = heartbeat_timeout(told, settings)
    assert timeout >= told  # a heartbeat on time is never late
    assert timeout >= base * multiplier - 1e-9  # never less than the grace of base periods
    assert timeout <= base * multiplier + epsilon + 1e-9  # one epsilon at most, whatever the grace


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


def test_deadlines_postpone_moves_every_deadline():
    deadlines = Deadlines()
    deadlines.register("a", 0.0, 15.0)
    deadlines.register("b", 0.0, 20.0)
    deadlines.postpone(10.0)
    assert deadlines.expired(24.0) == []
    assert deadlines.expired(25.0) == ["a"]
    assert deadlines.due("b") == 30.0


def test_cluster_settings_default_when_none_are_stored() -> None:
    settings = cluster_settings(MemoryStore().view())
    assert settings.heartbeat_period_s == 5.0 and settings.registration_limit == 3


def test_a_deadline_set_after_a_postponement_is_not_postponed():
    deadlines = Deadlines()
    deadlines.register("a", 0.0, 15.0)
    deadlines.postpone(10.0)
    assert deadlines.register("b", 5.0, 15.0) == 20.0
    assert deadlines.next_due() == 20.0
    assert deadlines.expired(20.0) == ["b"] and deadlines.expired(25.0) == ["a"]


# Operations on a table of deadlines against a plain dict of them (whole seconds: no rounding).
DEADLINE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["register", "heartbeat", "forget", "postpone", "expired"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 30),
    ),
    max_size=40,
)


@given(DEADLINE_OPS)
def test_deadlines_behave_as_a_dict_of_deadlines(ops: list[tuple[str, str, int]]) -> None:
    deadlines, model, now = Deadlines(), {}, 0.0
    for op, node, amount in ops:
        now += 1.0
        if op == "register":
            assert deadlines.register(node, now, float(amount)) == now + amount
            model[node] = now + amount
        elif op == "heartbeat":
            assert deadlines.heartbeat(node, now, float(amount)) == (node in model)
            if node in model:
                model[node] = now + amount
        elif op == "forget":
            assert deadlines.forget(node) == (model.pop(node, None) is not None)
        elif op == "postpone":
            deadlines.postpone(float(amount))
            model = {n: due + amount for n, due in model.items()}
        else:
            late = sorted((due, n) for n, due in model.items() if due <= now)
            assert deadlines.expired(now) == [n for _, n in late]
            model = {n: due for n, due in model.items() if due > now}
        assert {n: deadlines.due(n) for n in model} == model and len(deadlines) == len(model)
        assert deadlines.next_due() == (min(model.values()) if model else None)
