"""Automatic ejection of failing backends (N6): which backends of one node to take out, and which to
bring back. Pure: the caller measures, probes and applies.

Rules:
- a backend is ejected when its availability over the policy's window is under the threshold with at
  least the minimum number of requests, while at least one other serving backend of the node is
  healthy (at or above the threshold with enough requests): a node whose backends all fail has a
  problem ejection cannot fix;
- never more than `floor(cap x backends)` of a node's backends are ejected at once, but always at least
  one when a healthy peer keeps serving (as Envoy's outlier detection does: with two backends and a cap
  of 0.34 the floor is 0, and one failing backend of two could never go); at least one backend always
  serves (pinned-out and weight-0 backends do not count as serving); the worst go first;
- a backend pinned in is never ejected; a pinned-out one is the operator's, not ours;
- an ejected backend comes back after `probes_needed` consecutive successful probes.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from treeherd.model.gateway import Figure, Pin


class BackendHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What the decision needs to know about one backend of a node."""

    machine_id: str
    hostname: str
    address: str
    requests: int
    availability: float | None
    ejected: bool = False
    pin: Pin | None = None
    weight_zero: bool = False
    probe_successes: int = 0

    @property
    def serving_candidate(self) -> bool:
        """Counts as capacity: not taken out by the operator (pin out, weight 0)."""
        return self.pin != "out" and not self.weight_zero


class EjectionRule(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float
    min_requests: int
    cap: float
    probes_needed: int = 3


class EjectionDecision(msgspec.Struct, frozen=True, kw_only=True):
    action: Literal["eject", "restore"]
    machine_id: str
    hostname: str
    reason: str
    figures: dict[str, Figure]


def _healthy(backend: BackendHealth, rule: EjectionRule) -> bool:
    return (
        backend.requests >= rule.min_requests
        and backend.availability is not None
        and backend.availability >= rule.threshold
    )


def ejection_cap(cap: float, backends: int, serving_candidates: int) -> int:
    """How many of a node's backends may be ejected at once: the cap's share of them, at least one
    (each ejection still needs a healthy peer that keeps serving), and never every serving candidate."""
    return max(0, min(max(math.floor(cap * backends + 1e-9), 1), serving_candidates - 1))


def decide_ejections(
    node_path: str, backends: list[BackendHealth], rule: EjectionRule
) -> list[EjectionDecision]:
    """Ejections and restorations for one node's backends."""
    decisions: list[EjectionDecision] = []
    capacity = [b for b in backends if b.serving_candidate]
    ejected_now = sum(1 for b in capacity if b.ejected and b.pin != "in")
    for backend in sorted(capacity, key=lambda b: b.hostname):
        if backend.ejected and backend.pin != "in" and backend.probe_successes >= rule.probes_needed:
            decisions.append(
                EjectionDecision(
                    action="restore",
                    machine_id=backend.machine_id,
                    hostname=backend.hostname,
                    reason=(
                        f"{backend.hostname} ({backend.address}) of {node_path} answered"
                        f" {backend.probe_successes} probes in a row: back in service"
                    ),
                    figures={"probe_successes": backend.probe_successes},
                )
            )
            ejected_now -= 1
    allowed = ejection_cap(rule.cap, len(backends), len(capacity))
    candidates = sorted(
        (
            b
            for b in capacity
            if not b.ejected
            and b.pin != "in"
            and b.requests >= rule.min_requests
            and b.availability is not None
            and b.availability < rule.threshold
        ),
        key=lambda b: (b.availability, b.hostname),
    )
    for backend in candidates:
        if ejected_now >= allowed:
            break
        peers = [
            p for p in capacity if p.machine_id != backend.machine_id and not p.ejected and _healthy(p, rule)
        ]
        if not peers:
            continue
        assert backend.availability is not None
        peer_availability = min(p.availability or 0.0 for p in peers)
        decisions.append(
            EjectionDecision(
                action="eject",
                machine_id=backend.machine_id,
                hostname=backend.hostname,
                reason=(
                    f"{backend.hostname} ({backend.address}) of {node_path}: availability"
                    f" {backend.availability:.3f} over {backend.requests} requests is under {rule.threshold:.3f}"
                    f" while {len(peers)} peer(s) are at or above {peer_availability:.3f}"
                ),
                figures={
                    "availability": round(backend.availability, 4),
                    "requests": backend.requests,
                    "threshold": rule.threshold,
                    "healthy_peers": len(peers),
                    "peer_availability_min": round(peer_availability, 4),
                    "ejected_after": ejected_now + 1,
                    "cap": allowed,
                },
            )
        )
        ejected_now += 1
    return decisions
