"""A task's health from its check results: the pure state machine the agent's health checker steps.

"starting" until the first check passes; "healthy" after a pass; "unhealthy" after `retries` failures
in a row, where failures within the start period (counted from the task's start) do not count, as in
Docker. A pass at any time makes it healthy again.
"""

from __future__ import annotations

import msgspec

from treeherd.model.discovery import Health, HealthCheck


class HealthState(msgspec.Struct, frozen=True):
    health: Health = "starting"
    failures: int = 0  # in a row, counted ones only
    last_output: str = ""


def observe(
    state: HealthState, check: HealthCheck, *, passed: bool, since_start_s: float, output: str = ""
) -> HealthState:
    """The state after one check result, `since_start_s` seconds after the task started."""
    if passed:
        return HealthState("healthy", 0, output)
    if since_start_s < check.start_period_s and state.health == "starting":
        return HealthState("starting", 0, output)
    failures = state.failures + 1
    health: Health = "unhealthy" if failures >= max(1, check.retries) else state.health
    return HealthState(health, failures, output)
