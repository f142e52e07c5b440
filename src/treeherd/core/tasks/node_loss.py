"""The brake on mass node loss: which down machines' tasks may be replaced now.

One machine going down is a machine failure: its tasks are replaced at once, as SwarmKit does. Many
machines going down within a short time is more often the manager's or the network's trouble (a
partition, a manager that fell behind reading heartbeats) than as many machine failures, and replacing
all their tasks at once adds the load that makes the next wave of missed heartbeats. So, as the
Kubernetes node lifecycle controller does for a disrupted zone, when more than `fraction` of the agent
machines were lost within the last `hold_s` seconds, the tasks of a down machine are replaced only once
it has stayed down for `hold_s`. A machine that comes back within that time keeps its tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import msgspec


class LossBrake(msgspec.Struct, frozen=True):
    """Down machines whose tasks are held (not replaced yet), and when to look again."""

    held: frozenset[str] = frozenset()
    recheck_at: datetime | None = None
    # Why, for logs and events ("" when nothing is held).
    reason: str = ""


def loss_limit(agent_machines: int, fraction: float) -> int:
    """How many machines may be lost within the window before the brake holds replacements."""
    return max(1, int(agent_machines * fraction))


def node_loss_brake(
    down_since: Mapping[str, datetime],
    recent_losses: Iterable[datetime],
    agent_machines: int,
    now: datetime,
    *,
    fraction: float,
    hold_s: float,
) -> LossBrake:
    """`down_since`: each down machine and when it went down; `recent_losses`: when machines went down
    (one entry per loss, returned machines included) — only those within the last `hold_s` count."""
    window_start = now - timedelta(seconds=hold_s)
    lost = sum(1 for when in recent_losses if when > window_start)
    limit = loss_limit(agent_machines, fraction)
    if lost <= limit:
        return LossBrake()
    held = {m for m, since in down_since.items() if since > window_start}
    if not held:
        return LossBrake()
    recheck_at = min(down_since[m] for m in held) + timedelta(seconds=hold_s)
    reason = (
        f"{lost} of {agent_machines} machines went down within {hold_s:g}s (more than {limit}):"
        f" the tasks of {len(held)} down machine(s) are replaced once they have been down for {hold_s:g}s"
    )
    return LossBrake(frozenset(held), recheck_at, reason)
