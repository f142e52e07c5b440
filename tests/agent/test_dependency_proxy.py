"""The agent's local haproxy for its tasks' dependencies, against the real haproxy: a new agent adopts
the haproxy a killed one left serving, and keeps its servers until the manager sends the endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.proxy.conftest import one_frontend

from treeherd.agent.dependencies import DependencyProxy
from treeherd.core.tasks.agent_state import AgentState, AssignmentsReceived, RunnerProgressed
from treeherd.model.discovery import Dependency
from treeherd.model.services import Task, TaskSpec, TaskStatus
from treeherd.model.states import TaskState as S
from treeherd.model.wire import DependencyEndpoints, DependencyServer
from treeherd.proxy import LocalHaproxy
from treeherd.proxy.stats import servers_state
from treeherd.testing.backends import ask, backends
from treeherd.testing.ports import free_port
from treeherd.testing.waiting import eventually

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _running_dependent(port: int) -> AgentState:
    """An agent state with one RUNNING task that depends on `api` through local port `port`."""
    state = AgentState()
    task = Task(
        id="t1",
        version=1,
        created_at=NOW,
        updated_at=NOW,
        service_id="svc-app",
        service_name="app",
        machine_id="m-1",
        desired_state=S.RUNNING,
        status=TaskStatus(state=S.ASSIGNED, timestamp=NOW),
        spec=TaskSpec(command=["sleep", "inf"], depends_on=[Dependency(service="api", local_port=port)]),
        spec_version=1,
    )
    state.handle(AssignmentsReceived(cause_id="c0", now=NOW, full=True, updated=[task], removed=[]))
    for n, step in enumerate([S.ACCEPTED, S.PREPARING, S.READY, S.STARTING, S.RUNNING], start=1):
        state.handle(
            RunnerProgressed(cause_id=f"c{n}", now=NOW + timedelta(seconds=n), task_id="t1", state=step)
        )
    return state


async def _server_names(workdir: Path) -> list[str]:
    return sorted(row.name for row in await servers_state(str(workdir / "admin.sock")))


async def test_an_adopted_haproxy_keeps_its_servers_until_the_manager_sends_endpoints(tmp_path: Path) -> None:
    workdir = tmp_path / "haproxy"
    port = free_port()
    left_behind = LocalHaproxy(workdir)  # what a killed agent leaves serving
    proxy: DependencyProxy | None = None
    runner: asyncio.Task[None] | None = None
    try:
        async with backends("b1", "b2") as servers:
            await left_behind.start(one_frontend(port, servers, name="api"))
            before = await _server_names(workdir)
            assert len(before) == 2

            state = _running_dependent(port)
            proxy = DependencyProxy(state, workdir)
            runner = asyncio.create_task(proxy.run())
            proxy.changed()
            master = left_behind.master_pid
            await eventually(lambda: _adopted(proxy, master), "the adoption")
            # Task changes before the manager's first endpoints message: every apply keeps the servers
            # the adopted haproxy serves (an empty frontend would refuse every request).
            for _ in range(3):
                proxy.changed()
                await asyncio.sleep(0.05)
                assert await _server_names(workdir) == before
            assert await ask(port) in {"b1", "b2"}

            # The manager's message replaces them.
            proxy.endpoints(
                DependencyEndpoints(
                    service="api", servers=[DependencyServer(address="127.0.0.1", port=servers[1].port)]
                )
            )

            async def only_b2() -> bool:
                return len(await _server_names(workdir)) == 1 and await ask(port) == "b2"

            await eventually(only_b2, "the manager's endpoints applied")
    finally:
        if proxy is not None:
            proxy.stop()
        if runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 10)
        await left_behind.stop()


def _adopted(proxy: DependencyProxy, master: int | None) -> bool:
    return proxy.haproxy is not None and proxy.haproxy.master_pid == master
