"""When a node renews its certificate: at a random point in the last third of its validity.

Spreading renewals over a window (as SwarmKit does) keeps a cluster whose nodes joined together from
renewing all at once. The randomness comes from the caller as a fraction in [0, 1).
"""

from __future__ import annotations

from datetime import datetime, timedelta


def renewal_time(not_before: datetime, not_after: datetime, fraction: float) -> datetime:
    """The moment to renew a certificate valid from `not_before` to `not_after`."""
    if not 0 <= fraction < 1:
        raise ValueError("fraction must be in [0, 1)")
    when = not_before + (not_after - not_before) * ((2 + fraction) / 3)
    # timedelta rounds to microseconds: keep the moment inside the validity.
    return min(when, not_after - timedelta(microseconds=1))


def needs_renewal(not_before: datetime, not_after: datetime, fraction: float, now: datetime) -> bool:
    return now >= renewal_time(not_before, not_after, fraction)
