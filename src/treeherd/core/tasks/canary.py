"""Canary releases: how big a canary is, the judge of its figures, and the service a verdict leaves.

`service update --canary N|P%` with a changed spec puts the new spec on N slots (P % of the replicas,
rounded down, at least one) and leaves the others on the old spec: the updater (`core.tasks.rollout`)
replaces only the canary's slots. Every task is one backend of equal weight at the gateway and in the
local haproxies, so N of M tasks take about N/M of the requests.

The judge compares what the gateways measured of the canary's tasks (`new`) with the old tasks (`old`)
over the canary's window, counted from when every canary slot served the new spec:
- abort, as soon as the canary has `min_requests` requests, when its availability is more than `margin`
  percentage points under the old tasks' (with no request to the old tasks, under 100 %), or its p99
  latency is more than `latency_factor` times the old tasks' (p99s under `LATENCY_FLOOR_MS` count as
  that much: the latency histogram cannot tell them apart; and latencies are compared only once each
  version has `LATENCY_MIN_REQUESTS`, so that a p99 stands on at least five requests, not on the one
  slowest);
- promote, with `auto_promote`, once the window has passed with `min_requests` requests to the canary;
- otherwise wait (for more requests, the end of the window, or `service promote`).
An abort puts the previous spec back on the canary's slots (a rollback with the rollback policy); a
promotion rolls the new spec to the other slots with the update policy.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

import msgspec

from treeherd.core.tasks.rollout import rolled_back
from treeherd.model.errors import InvalidInput
from treeherd.model.services import CanaryPolicy, CanaryStatus, Service, UpdateStatus, VersionFigures

LATENCY_FLOOR_MS = 10.0
LATENCY_MIN_REQUESTS = 500


def canary_size(service: Service, policy: CanaryPolicy) -> int:
    """How many slots the canary takes; InvalidInput when the service cannot have one that size."""
    name = service.name
    if service.mode == "global":
        raise InvalidInput(
            f"service {name!r} is global (one task per machine): a canary needs a replicated service",
            field="canary",
        )
    if (policy.tasks > 0) == (policy.percent > 0):
        raise InvalidInput("give the canary's size as a number of tasks or as a percentage", field="canary")
    size = policy.tasks or max(1, math.floor(service.replicas * policy.percent / 100 + 1e-9))
    if size >= service.replicas:
        raise InvalidInput(
            f"a canary of {size} task{'s' if size != 1 else ''} leaves no task of service {name!r}"
            f" ({service.replicas} replica{'s' if service.replicas != 1 else ''}) on the old spec to compare"
            " with: use fewer tasks, or update without --canary",
            field="canary.tasks" if policy.tasks else "canary.percent",
        )
    return size


def canary_started(policy: CanaryPolicy, size: int, now: datetime) -> UpdateStatus:
    """The update status of a canary that begins now."""
    return UpdateStatus(
        state="canary",
        started_at=now,
        message=f"canary starting on {size} slot{'s' if size != 1 else ''}",
        canary=CanaryStatus(policy=policy, tasks=size),
    )


Action = Literal["wait", "abort", "promote"]


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the judge decided, why (with the figures, in words), and the figures."""

    action: Action
    reason: str
    old: VersionFigures
    new: VersionFigures


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def figures_text(old: VersionFigures, new: VersionFigures) -> str:
    """`canary (spec 3): 412 requests, 81 5xx, availability 80.34%, p99 4.1 ms; old (spec 2): ...`"""

    def one(label: str, f: VersionFigures) -> str:
        return (
            f"{label} (spec {f.spec_version}): {f.requests} requests, {f.errors} 5xx, availability"
            f" {_percent(f.availability)}, p99 {_ms(f.p99_ms)}"
        )

    return f"{one('canary', new)}; {one('old', old)}"


def judge(policy: CanaryPolicy, old: VersionFigures, new: VersionFigures, serving_s: float) -> Verdict:
    """The verdict on a canary that has served for `serving_s` seconds (see the module docstring);
    `old` and `new` are the figures over the window (the last `window_s` seconds, or since it serves)."""
    figures = figures_text(old, new)
    if new.requests >= policy.min_requests and new.availability is not None:
        baseline = old.availability if old.requests and old.availability is not None else 1.0
        lost = (baseline - new.availability) * 100
        if lost > policy.margin:
            return Verdict(
                action="abort",
                reason=f"availability {lost:.2f} points under the old version's (margin {policy.margin:g}):"
                f" {figures}",
                old=old,
                new=new,
            )
        enough = min(new.requests, old.requests) >= LATENCY_MIN_REQUESTS
        if enough and new.p99_ms is not None and old.p99_ms is not None:
            allowed = policy.latency_factor * max(old.p99_ms, LATENCY_FLOOR_MS)
            if new.p99_ms > allowed:
                return Verdict(
                    action="abort",
                    reason=f"p99 latency {new.p99_ms:g} ms is over {policy.latency_factor:g} times the old"
                    f" version's: {figures}",
                    old=old,
                    new=new,
                )
    if serving_s < policy.window_s:
        left = policy.window_s - serving_s
        return Verdict(action="wait", reason=f"judged for {left:.0f}s more: {figures}", old=old, new=new)
    if new.requests < policy.min_requests:
        return Verdict(
            action="wait",
            reason=f"waiting for {policy.min_requests} requests to the canary: {figures}",
            old=old,
            new=new,
        )
    if policy.auto_promote:
        return Verdict(action="promote", reason=f"passed: {figures}", old=old, new=new)
    return Verdict(action="wait", reason=f"passed, waiting for service promote: {figures}", old=old, new=new)


def promoted(service: Service, now: datetime, why: str, verdict: Verdict | None = None) -> Service:
    """The service with its canary promoted: the other slots follow with the update policy."""
    status = service.update_status
    assert status is not None and status.canary is not None
    canary = msgspec.structs.replace(
        status.canary,
        verdict=f"promoted: {why}",
        old=verdict.old if verdict else status.canary.old,
        new=verdict.new if verdict else status.canary.new,
    )
    updating = UpdateStatus(
        state="updating",
        started_at=now,
        message=f"canary promoted ({why}): update in progress",
        canary=canary,
    )
    return msgspec.structs.replace(service, update_status=updating, updated_at=now)


def aborted(service: Service, now: datetime, why: str, verdict: Verdict | None = None) -> Service:
    """The service with its canary aborted: the previous spec comes back on the canary's slots."""
    status = service.update_status
    assert status is not None and status.canary is not None
    canary = msgspec.structs.replace(
        status.canary,
        verdict=f"aborted: {why}",
        old=verdict.old if verdict else status.canary.old,
        new=verdict.new if verdict else status.canary.new,
    )
    return rolled_back(service, now, f"canary aborted: {why}", canary)


def under_canary(service: Service) -> bool:
    status = service.update_status
    return status is not None and status.state == "canary" and status.canary is not None
