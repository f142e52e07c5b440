"""Availability per spec version: the gateway's canary window, and the manager's grouping of backends
by the version of the task each one is (old tasks against a canary's).

- The gateway measures, beside its fixed windows, a window named `canary` on every backend of a service
  whose canary serves: the canary's `window_s`, or less while the canary has served a shorter time
  (`canary_windows`), so the canary's tasks and the old ones are measured over the same seconds.
- The manager knows which task each backend address is (the service's endpoint registrations) and the
  task's spec version; `by_version` adds up a service's backends per version, window by window, and
  `canary_figures` adds up the `canary` windows of every gateway for the judge (`core.tasks.canary`).
Windows add up exactly through their latency histograms (`core.edge.availability.merged`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from treeherd.core.edge.availability import merged
from treeherd.core.view import View
from treeherd.model.availability import ServiceAvailability, VersionAvailability, WindowStats
from treeherd.model.discovery import Endpoint
from treeherd.model.routing import RoutingSnapshot
from treeherd.model.services import Service, Task, VersionFigures

CANARY_WINDOW = "canary"


def address_of(address: str, port: int) -> str:
    """`ip:port` as nginx logs a backend (IPv6 in brackets), the key backends are reported under."""
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def canary_windows(snapshot: RoutingSnapshot, now: float) -> dict[str, float]:
    """Seconds of the `canary` window by endpoint id, for every endpoint of a service whose canary
    serves: the last `window_s` seconds, or since the canary serves if that is shorter."""
    seconds: dict[str, float] = {}
    for service in snapshot.services:
        status = service.update_status
        if status is None or status.state != "canary" or status.canary is None:
            continue
        serving_at = status.canary.serving_at
        if serving_at is None:
            continue
        seconds[service.name] = max(0.0, min(status.canary.policy.window_s, now - serving_at.timestamp()))
    return {e.id: seconds[e.service] for e in snapshot.endpoints if e.service in seconds}


# A backend address -> (service name, spec version of the task it is).
Versions = Mapping[str, tuple[str, int]]


def by_version(
    service: ServiceAvailability, versions: Versions, canaries: Mapping[str, int]
) -> list[VersionAvailability]:
    """The service's backends that are tasks, added up per (service, spec version), window by window;
    `canaries`: the version a canary runs, by service name."""
    groups: dict[tuple[str, int], list[int]] = {}
    for index, backend in enumerate(service.backends):
        found = versions.get(backend.address)
        if found is not None:
            groups.setdefault(found, []).append(index)
    result = []
    for (name, version), indexes in sorted(groups.items()):
        backends = [service.backends[i] for i in indexes]
        windows = sorted({w for b in backends for w in b.windows})
        result.append(
            VersionAvailability(
                service=name,
                spec_version=version,
                canary=canaries.get(name) == version,
                backends=len(backends),
                windows={
                    w: merged((b.windows[w], b.histograms.get(w, [])) for b in backends if w in b.windows)
                    for w in windows
                },
            )
        )
    return result


def canary_figures(
    reports: Iterable[ServiceAvailability], versions: Versions, name: str, current: int
) -> tuple[VersionFigures, VersionFigures]:
    """(old, new): the `canary` windows of service `name`'s backends in every report, added up for the
    tasks of its current spec version (the canary's) and for the others (the old tasks)."""
    old: list[tuple[WindowStats, list[int]]] = []
    new: list[tuple[WindowStats, list[int]]] = []
    old_versions: set[int] = set()
    for service in reports:
        for backend in service.backends:
            found = versions.get(backend.address)
            if found is None or found[0] != name or CANARY_WINDOW not in backend.windows:
                continue
            part = (backend.windows[CANARY_WINDOW], backend.histograms.get(CANARY_WINDOW, []))
            if found[1] == current:
                new.append(part)
            else:
                old.append(part)
                old_versions.add(found[1])
    return (
        _figures(merged(old), max(old_versions, default=current - 1)),
        _figures(merged(new), current),
    )


def _figures(stats: WindowStats, version: int) -> VersionFigures:
    return VersionFigures(
        spec_version=version,
        requests=stats.requests,
        errors=stats.errors,
        availability=None if stats.availability is None else round(stats.availability, 6),
        p99_ms=stats.p99_ms,
    )


def task_versions(view: View) -> dict[str, tuple[str, int]]:
    """Every registered task endpoint's backend address -> (service name, the task's spec version)."""
    found: dict[str, tuple[str, int]] = {}
    for endpoint in view.all(Endpoint):
        task = view.get(Task, endpoint.task_id) if endpoint.task_id is not None else None
        if task is not None:
            found[address_of(endpoint.address, endpoint.port)] = (task.service_name, task.spec_version)
    return found


def canary_versions(view: View) -> dict[str, int]:
    """The spec version each service's canary runs, for the services with a canary under way."""
    return {
        s.name: s.spec_version
        for s in view.all(Service)
        if s.update_status is not None and s.update_status.state == "canary"
    }
