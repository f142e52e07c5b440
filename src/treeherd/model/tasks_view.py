"""Read models of services and tasks for the API and `service ps`."""

from __future__ import annotations

from datetime import datetime

import msgspec

from treeherd.model.services import Service


class TaskRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One task as `service ps` shows it.

    Not tracked by the cycle collector (plain data, no cycle): a list of a million rows would
    otherwise set off full collections over every object of the manager while it is made."""

    id: str
    service: str
    slot: int
    hostname: str | None
    desired_state: str
    state: str
    # "starting", "healthy" or "unhealthy" for a running task with a health check, else "".
    health: str = ""
    since: datetime
    message: str
    error: str
    placement_error: str
    ports: dict[str, int]
    spec_version: int
    cause: str
    restart_at: datetime | None
    # Its spec is not the service's: an update is to replace it. (A task of an older version whose spec
    # equals the current one, as after a rollback, is not outdated.)
    outdated: bool = False


class ServiceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A service with its node's path and how many tasks run."""

    service: Service
    path: str
    running: int
    desired: int


class StoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded version of a task: what changed and why."""

    revision: int
    time: datetime
    event: str
    desired_state: str
    state: str
    message: str
    hostname: str | None
