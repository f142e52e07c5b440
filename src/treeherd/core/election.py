"""Leader election among managers on one etcd prefix: the pure decisions of the lease-key recipe.

Each candidate puts one key under `PREFIX/election/`, bound to its own lease, holding its
`ManagerRecord`. The leader is the candidate whose key was created first (lowest create revision): a
campaign is won when every older key is gone, and it is lost when the own key is gone (its lease
expired or was revoked). A leader that cannot renew its lease steps down before etcd can have expired
it: etcd counts the TTL from the last renewal it received, which is no earlier than when it was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from treeherd.model.managers import ManagerRecord

# What a candidate learns from the keys: it leads, it waits for an older key to go, or its key is gone.
Standing = Literal["leader", "waiting", "lost"]
# Of the TTL without a renewal: step down, etcd may expire the lease soon. The margin left is for the
# leader's components to stop; a 3-member etcd electing a new raft leader (1.6-2.2 s here) renews
# nothing meanwhile, and a 3 s TTL rides that out.
STEP_DOWN_FRACTION = 0.85


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """One election key as read from etcd."""

    key: bytes
    create_revision: int
    record: ManagerRecord


def leader_of(candidates: Iterable[Candidate]) -> Candidate | None:
    """The candidate whose key is the oldest; None when nobody campaigns."""
    return min(candidates, key=lambda c: (c.create_revision, c.key), default=None)


def standing(own_key: bytes, candidates: Iterable[Candidate]) -> Standing:
    """Where the candidate with `own_key` stands among the keys read in one range."""
    keys = list(candidates)
    if not any(c.key == own_key for c in keys):
        return "lost"
    leader = leader_of(keys)
    return "leader" if leader is not None and leader.key == own_key else "waiting"


def must_step_down(last_renewal_sent: float, now: float, ttl_s: float) -> bool:
    """Whether a leader whose last successful renewal was sent at `last_renewal_sent` (monotonic
    seconds) must stop acting: close enough to the TTL that etcd may expire its key any moment."""
    return now - last_renewal_sent >= ttl_s * STEP_DOWN_FRACTION


def renewal_period(ttl_s: float) -> float:
    """How often a candidate renews its lease: three chances before it would have to step down."""
    return ttl_s / 4


def lag(leader_revision: int, applied: int) -> int:
    """How many store revisions a manager is behind (never negative: a follower may read ahead of the
    leader's last report)."""
    return max(0, leader_revision - applied)


def manager_urls(text: str) -> list[str]:
    """The manager URLs of `http://a:7400,http://b:7400` (one or several), each once, in order."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def dial_order(managers: Sequence[str], first: str | None = None) -> list[str]:
    """The managers an agent tries, in order: `first` (the leader a follower named, or the manager of
    the session that just ended), then the others as known."""
    order = [first] if first else []
    return list(dict.fromkeys([*order, *managers]))


def known_managers(configured: Sequence[str], told: Sequence[str]) -> list[str]:
    """The managers an agent knows: those the leader told it (SwarmKit's session managers list) when
    it names several, then those it was configured with."""
    return list(dict.fromkeys([*(told if len(told) > 1 else ()), *configured]))
