"""Automatic ejection (core/edge/ejection.py): threshold, healthy peers, the cap, pins, probes."""

from __future__ import annotations

from treeherd.core.edge.ejection import BackendHealth, EjectionRule, decide_ejections

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
    two = decide_ejections("n", [b("a", 0.1), b("b", 1.0)], RULE)
    assert two == []  # floor(0.34 x 2) = 0: the default cap needs three backends


def test_pins_are_the_operators() -> None:
    assert decide_ejections("n", [b("a", 0.0, pin="in"), b("b", 1.0), b("c", 1.0)], RULE) == []


def test_probes_bring_an_ejected_backend_back() -> None:
    waiting = [b("a", 0.0, ejected=True, probe_successes=2), b("b", 1.0), b("c", 1.0)]
    assert decide_ejections("n", waiting, RULE) == []
    ready = [b("a", 0.0, ejected=True, probe_successes=3), b("b", 1.0), b("c", 1.0)]
    [decision] = decide_ejections("n", ready, RULE)
    assert decision.action == "restore" and decision.figures == {"probe_successes": 3}
