"""Which machines need the endpoints of which services: those running tasks that depend on them
(`--depends-on`), so the dispatcher sends each agent's haproxy the endpoints it needs, and only those."""

from __future__ import annotations

from treeherd.core.edge.discovery import service_endpoints
from treeherd.core.view import View
from treeherd.model.services import Task
from treeherd.model.wire import DependencyEndpoints, DependencyServer

__all__ = ["DependencyFeeds", "dependency_message"]


def dependency_message(view: View, service: str) -> DependencyEndpoints:
    servers = [
        DependencyServer(address=e.address, port=e.port, weight=e.weight)
        for e in service_endpoints(view, service)
    ]
    return DependencyEndpoints(service=service, servers=servers)


class DependencyFeeds:
    """machine -> service -> the tasks on it that depend on that service, and service -> the machines
    that need it (read at every endpoint change: no scan of every machine)."""

    def __init__(self) -> None:
        self._by_machine: dict[str, dict[str, set[str]]] = {}
        self._by_service: dict[str, set[str]] = {}
        self._task_pairs: dict[str, tuple[str, tuple[str, ...]]] = {}

    def note(self, task: Task, *, deleted: bool = False) -> list[tuple[str, str]]:
        """Take a task's latest version into account; returns the (machine, service) pairs it made new."""
        old = self._task_pairs.pop(task.id, None)
        if old is not None:
            machine_id, services = old
            for service in services:
                holders = self._by_machine.get(machine_id, {}).get(service)
                if holders is not None:
                    holders.discard(task.id)
                    if not holders:
                        del self._by_machine[machine_id][service]
                        self._drop(service, machine_id)
        alive = not deleted and task.machine_id is not None and not task.status.state.terminal
        if not alive or not task.spec.depends_on or task.machine_id is None:
            return []
        services = tuple(d.service for d in task.spec.depends_on)
        self._task_pairs[task.id] = (task.machine_id, services)
        added: list[tuple[str, str]] = []
        wanted = self._by_machine.setdefault(task.machine_id, {})
        for service in services:
            if service not in wanted:
                wanted[service] = set()
                self._by_service.setdefault(service, set()).add(task.machine_id)
                added.append((task.machine_id, service))
            wanted[service].add(task.id)
        return added

    def services_of(self, machine_id: str) -> list[str]:
        return sorted(self._by_machine.get(machine_id, {}))

    def machines_of(self, service: str) -> list[str]:
        return sorted(self._by_service.get(service, ()))

    def _drop(self, service: str, machine_id: str) -> None:
        machines = self._by_service.get(service)
        if machines is not None:
            machines.discard(machine_id)
            if not machines:
                del self._by_service[service]
