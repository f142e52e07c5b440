"""The brake on mass node loss: when replacements of a down machine's tasks wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.tasks.node_loss import LossBrake, loss_limit, node_loss_brake

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def brake(down: dict[str, datetime], losses: list[datetime], machines: int = 10) -> LossBrake:
    return node_loss_brake(down, losses, machines, NOW, fraction=0.1, hold_s=60)


def test_one_machine_lost_is_replaced_at_once():
    assert brake({"m1": ago(1)}, [ago(1)]) == LossBrake()


def test_more_lost_than_the_limit_within_the_window_are_held_until_the_hold_ends():
    result = brake({"m1": ago(10), "m2": ago(5)}, [ago(10), ago(5)])
    assert result.held == {"m1", "m2"}
    assert result.recheck_at == ago(10) + timedelta(seconds=60)
    assert "2 of 10 machines went down within 60s" in result.reason


def test_machines_that_came_back_count_toward_the_limit():
    # m2 and m3 returned; their losses still say the cluster is losing machines fast.
    assert brake({"m1": ago(1)}, [ago(20), ago(10), ago(1)]).held == {"m1"}


def test_a_machine_down_longer_than_the_hold_is_released():
    result = brake({"m1": ago(61), "m2": ago(5)}, [ago(59), ago(58), ago(5)])
    assert result.held == {"m2"}
    assert result.recheck_at == ago(5) + timedelta(seconds=60)


def test_losses_older_than_the_window_do_not_count():
    assert brake({"m1": ago(1)}, [ago(120), ago(90), ago(1)]) == LossBrake()


def test_the_limit_is_a_share_of_the_agent_machines_and_at_least_one():
    assert loss_limit(3, 0.1) == 1
    assert loss_limit(1000, 0.1) == 100
    assert loss_limit(0, 0.5) == 1
    assert brake({"m1": ago(1), "m2": ago(1)}, [ago(1), ago(1)], machines=1000) == LossBrake()


@given(
    downs=st.dictionaries(st.sampled_from([f"m{i}" for i in range(20)]), st.floats(0, 200), max_size=20),
    extra_losses=st.lists(st.floats(0, 200), max_size=20),
    machines=st.integers(1, 40),
    fraction=st.floats(0, 1),
)
def test_only_recently_lost_down_machines_are_ever_held(downs, extra_losses, machines, fraction):
    down = {m: ago(s) for m, s in downs.items()}
    losses = [*down.values(), *(ago(s) for s in extra_losses)]
    result = node_loss_brake(down, losses, machines, NOW, fraction=fraction, hold_s=60)
    recent = sum(1 for when in losses if when > ago(60))
    assert result.held <= set(down)
    assert all(down[m] > ago(60) for m in result.held)
    if recent <= loss_limit(machines, fraction):
        assert result == LossBrake()
    else:
        assert result.held == {m for m, when in down.items() if when > ago(60)}
    if result.held:
        assert result.recheck_at is not None and result.recheck_at > NOW
