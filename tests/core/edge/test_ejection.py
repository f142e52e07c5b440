"""Automatic ejection (core/edge/ejection.py): threshold, healthy peers, the cap, pins, probes."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.edge.ejection import BackendHealth, EjectionRule, decide_ejections, ejection_cap

RULE = EjectionRule(threshold=0.8, min_requests=10, cap=0.34, probes_needed=3)


def b(name: str, availability: float | None, requests: int = 50, **fields: object) -> BackendHealth:
    return BackendHealth(
        machine_id=f"m-{name}", hostname=name, address=f"{name}:80", requests=requests,
        availability=availability, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_failing_backend_with_healthy_peers_is_ejected_with_its_figures() -> None:
    [decision] = decide_ejections("corp.api", [b("a", 0.2), b("b", 1.0), b("c", 0.99)], RULE)
    assert decision.action == "eject" and decision.hostname == "a"
    assert decision.figures["availability"] == 0.2 and decision.figures["requests"] == 50
    assert decision.figures["healthy_peers"] == 2
    assert "0.200" in decision.reason and "corp.api" in decision.reason


def test_nothing_is_ejected_when_every_backend_fails() -> None:
    assert decide_ejections("n", [b("a", 0.1), b("b", 0.2), b("c", 0.3)], RULE) == []


def test_too_few_requests_decide_nothing() -> None:
    assert decide_ejections("n", [b("a", 0.0, requests=9), b("b", 1.0), b("c", 1.0)], RULE) == []


def test_the_cap_holds_and_the_worst_goes_first() -> None:
    backends = [b("a", 0.5), b("b", 0.1), b("c", 1.0), b("d", 1.0), b("e", 1.0), b("f", 0.3)]
    decisions = decide_ejections("n", backends, RULE)
    assert [d.hostname for d in decisions] == ["b", "f"]  # floor(0.34 x 6) = 2
    already = [b("a", 0.5), b("b", 0.1, ejected=True), b("c", 1.0), b("d", 1.0), b("e", 1.0), b("f", 0.3)]
    assert [d.hostname for d in decide_ejections("n", already, RULE)] == ["f"]


def test_at_least_one_backend_keeps_serving() -> None:
    generous = EjectionRule(threshold=0.8, min_requests=10, cap=1.0)
    decisions = decide_ejections("n", [b("a", 0.1), b("b", 1.0)], generous)
    assert [d.hostname for d in decisions] == ["a"]
    pinned_out = [b("a", 0.1), b("b", 1.0), b("c", 1.0, pin="out")]
    assert [d.hostname for d in decide_ejections("n", pinned_out, generous)] == ["a"]
    [two] = decide_ejections("n", [b("a", 0.1), b("b", 1.0)], RULE)
    assert two.hostname == "a" and two.figures["cap"] == 1  # floor(0.34 x 2) = 0, but one may always go
    assert decide_ejections("n", [b("a", 0.1), b("b", 0.2)], RULE) == []  # no healthy peer: nothing
    assert decide_ejections("n", [b("a", 0.1, ejected=True), b("b", 0.1), b("c", 1.0)], RULE) == []


def test_the_cap_allows_one_ejection_however_small_the_share() -> None:
    assert ejection_cap(0.34, 2, 2) == 1
    assert ejection_cap(0.0, 5, 5) == 1
    assert ejection_cap(0.34, 6, 6) == 2
    assert ejection_cap(1.0, 3, 3) == 2  # one always serves
    assert ejection_cap(0.5, 2, 1) == 0  # the other one is pinned out


def test_pins_are_the_operators() -> None:
    assert decide_ejections("n", [b("a", 0.0, pin="in"), b("b", 1.0), b("c", 1.0)], RULE) == []


def test_probes_bring_an_ejected_backend_back() -> None:
    waiting = [b("a", 0.0, ejected=True, probe_successes=2), b("b", 1.0), b("c", 1.0)]
    assert decide_ejections("n", waiting, RULE) == []
    ready = [b("a", 0.0, ejected=True, probe_successes=3), b("b", 1.0), b("c", 1.0)]
    [decision] = decide_ejections("n", ready, RULE)
    assert decision.action == "restore" and decision.figures == {"probe_successes": 3}


def _backend(index: int, drawn: tuple[float | None, int, bool, str | None, bool]) -> BackendHealth:
    availability, requests, ejected, pin, weight_zero = drawn
    return BackendHealth(
        machine_id=f"m{index}", hostname=f"h{index}", address=f"10.0.0.{index}:80", requests=requests,
        availability=availability, ejected=ejected, pin=pin, weight_zero=weight_zero,  # type: ignore[arg-type]
    )  # fmt: skip


BACKENDS = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(0.0, 1.0)),
        st.integers(0, 40),
        st.booleans(),
        st.sampled_from([None, None, None, "in", "out"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
).map(lambda drawn: [_backend(i, d) for i, d in enumerate(drawn)])
RULES = st.builds(
    EjectionRule,
    threshold=st.floats(0.05, 1.0),
    min_requests=st.integers(1, 30),
    cap=st.floats(0.0, 1.0),
    probes_needed=st.just(3),
)


def _serving(backend: BackendHealth) -> bool:
    return backend.serving_candidate and (not backend.ejected or backend.pin == "in")


@given(BACKENDS, RULES)
def test_ejection_never_takes_the_last_healthy_backend_and_always_allows_one(
    backends: list[BackendHealth], rule: EjectionRule
) -> None:
    decisions = decide_ejections("n", backends, rule)
    ejected = {d.machine_id for d in decisions if d.action == "eject"}
    restored = {d.machine_id for d in decisions if d.action == "restore"}
    after = [
        msgspec.structs.replace(
            x, ejected=(x.ejected and x.machine_id not in restored) or x.machine_id in ejected
        )
        for x in backends
    ]

    def healthy(x: BackendHealth) -> bool:
        return (
            x.requests >= rule.min_requests
            and x.availability is not None
            and x.availability >= rule.threshold
        )

    # A healthy backend is never ejected, nor one pinned in, and whatever served before still has
    # at least one serving backend after.
    for x in backends:
        if x.machine_id in ejected:
            assert not healthy(x) and x.pin != "in" and x.serving_candidate and not x.ejected
    if any(_serving(x) for x in backends):
        assert any(_serving(x) for x in after)
    # Each ejection leaves a healthy peer serving.
    if ejected:
        assert any(healthy(x) and _serving(x) for x in after)
    # With nothing ejected yet, a failing backend and a healthy serving peer, one ejection is allowed.
    failing = [
        x for x in backends
        if x.serving_candidate and x.pin != "in" and x.requests >= rule.min_requests
        and x.availability is not None and x.availability < rule.threshold
    ]  # fmt: skip
    peers = [x for x in backends if x.serving_candidate and not x.ejected and healthy(x)]
    if not any(x.ejected for x in backends) and failing and peers:
        assert len(ejected) >= 1
