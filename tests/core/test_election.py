"""The election's pure decisions: who leads, who waits, when a leader steps down."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.election import (
    STEP_DOWN_FRACTION,
    Candidate,
    dial_order,
    known_managers,
    lag,
    leader_of,
    manager_urls,
    must_step_down,
    renewal_period,
    standing,
)
from treeherd.model.managers import ManagerRecord


def candidate(name: str, revision: int) -> Candidate:
    return Candidate(
        key=b"/t/election/" + name.encode(),
        create_revision=revision,
        record=ManagerRecord(id=name, url=f"http://{name}:7400"),
    )


def test_the_oldest_key_leads_and_the_others_wait() -> None:
    keys = [candidate("b", 12), candidate("a", 7), candidate("c", 30)]
    assert leader_of(keys) == keys[1]
    assert standing(b"/t/election/a", keys) == "leader"
    assert standing(b"/t/election/b", keys) == "waiting"
    assert standing(b"/t/election/gone", keys) == "lost"
    assert leader_of([]) is None
    assert standing(b"/t/election/a", []) == "lost"


def test_a_leader_steps_down_before_its_lease_can_expire() -> None:
    assert not must_step_down(10.0, 12.5, 3.0)
    assert must_step_down(10.0, 12.6, 3.0)
    assert not must_step_down(10.0, 12.6, 3.1)
    # Three renewals fit before the step-down point.
    assert 3 * renewal_period(3.0) <= 3.0 * STEP_DOWN_FRACTION
    assert lag(10, 7) == 3
    assert lag(10, 12) == 0


names = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


@given(names, st.randoms())
def test_exactly_one_candidate_leads_whatever_the_order(keys: list[str], rng: object) -> None:
    revisions = list(range(1, len(keys) + 1))
    rng.shuffle(revisions)  # type: ignore[attr-defined]
    candidates = [candidate(name, revision) for name, revision in zip(keys, revisions, strict=True)]
    leading = [c for c in candidates if standing(c.key, candidates) == "leader"]
    assert len(leading) == 1
    assert leading[0].create_revision == min(revisions)
    # The leader's key going away hands leadership to the next oldest, never to a newer one first.
    rest = [c for c in candidates if c is not leading[0]]
    if rest:
        successor = leader_of(rest)
        assert successor is not None
        assert successor.create_revision == sorted(revisions)[1]


@given(st.floats(0, 1e6), st.floats(0, 100), st.floats(0.5, 60))
def test_step_down_is_monotonic_in_time(sent: float, elapsed: float, ttl: float) -> None:
    if must_step_down(sent, sent + elapsed, ttl):
        assert must_step_down(sent, sent + elapsed + 1.0, ttl)
    assert not must_step_down(sent, sent + renewal_period(ttl), ttl)


def test_agents_dial_the_named_leader_first_then_the_others() -> None:
    assert manager_urls("http://a:7400, http://b:7400,,http://a:7400") == ["http://a:7400", "http://b:7400"]
    assert dial_order(["a", "b", "c"], "c") == ["c", "a", "b"]
    assert dial_order(["a", "b"]) == ["a", "b"]
    # One manager told (its own URL): the configured list stays as it was.
    assert known_managers(["http://localhost:7400"], ["http://127.0.0.1:7400"]) == ["http://localhost:7400"]
    assert known_managers(["a"], ["b", "c"]) == ["b", "c", "a"]


@given(st.lists(st.sampled_from("abcdef"), max_size=6), st.one_of(st.none(), st.sampled_from("abcdefg")))
def test_dial_order_tries_every_manager_once(managers: list[str], first: str | None) -> None:
    order = dial_order(managers, first)
    assert len(order) == len(set(order))
    assert set(order) == set(managers) | ({first} if first else set())
    if first:
        assert order[0] == first
