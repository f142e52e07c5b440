"""The agent's local haproxy for its tasks' dependencies (SmartStack's model, D3).

Every service a task here depends on (`--depends-on SVC`) gets a frontend on 127.0.0.1:LOCALPORT (the
same port on every host); its servers are the service's live endpoints, which the manager sends
(`DependencyEndpoints`) at session start and at every change. Endpoint changes reach haproxy through its
runtime API without a reload; only a change in the set of frontends reloads it (hitless, checked first
with `haproxy -c`). The proxy stops with the agent; an agent that was killed leaves it serving, and the
next agent adopts it (same master, brought to the desired state without a restart) when it is alive,
haproxy and answering its master socket, else ends it and starts a fresh one. While it runs, it
is supervised: a master that dies or stops answering its CLI socket is replaced within about a second
on the state last applied (a crash loop backs off), and the next apply catches up from there; each
restart and crash-loop alert goes to `on_event` (the agent sends it to the manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Literal

import psutil

from treeherd.core.tasks.agent_state import AgentState
from treeherd.model.states import TaskState
from treeherd.model.wire import DependencyEndpoints, DependencyServer
from treeherd.proxy.haproxy import LocalHaproxy
from treeherd.proxy.haproxy_supervisor import ProxyEventSink, supervise
from treeherd.proxy.master import find_haproxy
from treeherd.render.haproxy import LocalProxy, ProxyFrontend, ProxyServer, haproxy_name, server_name

__all__ = ["DependencyProxy", "HaproxyMode", "desired_proxy"]

log = logging.getLogger(__name__)

HaproxyMode = Literal["auto", "off"]
RETRY_S = 2.0  # after a failed apply (haproxy could not load a configuration)
LEFTOVER_WAIT_S = 3.0


def desired_proxy(state: AgentState, servers: dict[str, list[DependencyServer]]) -> LocalProxy:
    """One frontend per service the agent's live tasks depend on, with its known endpoints."""
    ports: dict[str, int] = {}
    for task, status in state.tasks_with_dependencies():
        if status.state.terminal or task.desired_state > TaskState.RUNNING:
            continue
        for dependency in task.spec.depends_on:
            if dependency.local_port is not None:
                ports.setdefault(dependency.service, dependency.local_port)
    frontends = [
        ProxyFrontend(
            name=service,
            port=port,
            servers=[
                ProxyServer(
                    name=server_name(s.address, s.port), address=s.address, port=s.port, weight=s.weight
                )
                for s in servers.get(service, [])
            ],
        )
        for service, port in sorted(ports.items())
    ]
    return LocalProxy(frontends=frontends)


async def stop_leftover(workdir: Path) -> None:
    """Stop a haproxy a previous agent left running on this directory (it was killed, not stopped):
    it would share the local ports with the new one (SO_REUSEPORT) and serve stale endpoints."""
    try:
        pid = int((workdir / "haproxy.pid").read_text().split()[0])
        master = psutil.Process(pid)
        if str(workdir) not in " ".join(master.cmdline()):
            return  # the pid was reused by something else
        group = [master, *master.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return
    log.warning("stopping the haproxy (pid %d) a previous agent left running", pid)
    for process in group:
        with contextlib.suppress(psutil.Error):
            process.kill()
    await asyncio.to_thread(psutil.wait_procs, group, LEFTOVER_WAIT_S)


class DependencyProxy:
    """Keeps this host's haproxy at `desired_proxy`; `changed()` and `endpoints()` never block."""

    def __init__(
        self,
        state: AgentState,
        workdir: Path,
        *,
        mode: HaproxyMode = "auto",
        binary: str = "haproxy",
        on_event: ProxyEventSink | None = None,
    ) -> None:
        self._state = state
        self._workdir = workdir
        self._mode = mode
        self._binary = binary
        self._servers: dict[str, list[DependencyServer]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._applied: LocalProxy | None = None
        self.haproxy: LocalHaproxy | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._warned = False
        self._on_event = on_event  # restarts and crash-loop alerts of the supervised master

    def endpoints(self, message: DependencyEndpoints) -> None:
        self._servers[message.service] = message.servers
        self._wake.set()

    def changed(self) -> None:
        # No task depends on anything and no haproxy serves a frontend: the apply would do nothing.
        idle = self.haproxy is None or (self._applied is not None and not self._applied.frontends)
        if idle and not self._state.tasks_with_dependencies():
            return
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                if not await self._apply(desired_proxy(self._state, self._servers)):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RETRY_S):
                            await self._wake.wait()
                    self._wake.set()
        finally:
            if self._supervisor is not None:
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._supervisor
            if self.haproxy is not None:
                with contextlib.suppress(Exception):
                    await self.haproxy.stop()

    async def _apply(self, desired: LocalProxy) -> bool:
        if desired == self._applied:
            return True
        if self.haproxy is None:
            if not desired.frontends:
                return True
            if not self._usable():
                return True
            self._workdir.mkdir(parents=True, exist_ok=True)
            self.haproxy = LocalHaproxy(self._workdir, binary=self._binary)
            try:
                adopted = await self.haproxy.adopt()
                if adopted is None:
                    await stop_leftover(self._workdir)
                    await self.haproxy.start(desired)
                else:
                    self._remember_adopted_servers(desired, adopted)
                    desired = desired_proxy(self._state, self._servers)
                    await self.haproxy.apply(desired)
            except Exception as error:
                log.warning("the local haproxy did not start: %s", error)
                with contextlib.suppress(Exception):
                    await self.haproxy.stop()
                self.haproxy = None
                return False
            verb = "adopted" if adopted is not None else "started"
            log.info("local haproxy %s for %s", verb, ", ".join(f.name for f in desired.frontends))
            self._supervisor = asyncio.create_task(
                supervise(self.haproxy, on_restart=lambda _cause: self._wake.set(), on_event=self._on_event),
                name="haproxy-supervisor",
            )
            self._applied = desired
            return True
        try:
            result = await self.haproxy.apply(desired)
        except Exception as error:
            log.warning("the local haproxy kept its previous state: %s", error)
            return False
        if result.reloaded:
            log.info("local haproxy reloaded for frontends %s", ", ".join(f.name for f in desired.frontends))
        self._applied = desired
        return True

    def _remember_adopted_servers(self, desired: LocalProxy, serving: LocalProxy) -> None:
        """A service whose endpoints the manager has not sent yet keeps the servers the adopted haproxy
        has until it does (an empty frontend meanwhile would fail every request); the manager's first
        message for it replaces them. Kept with the manager's endpoints, not only for the first apply:
        any apply before that message (a task changing state) would empty the frontend too."""
        have = {f.name: f.servers for f in serving.frontends}
        for frontend in desired.frontends:
            servers = have.get(haproxy_name(frontend.name))
            if frontend.name not in self._servers and servers is not None:
                self._servers[frontend.name] = [
                    DependencyServer(address=s.address, port=s.port, weight=s.weight) for s in servers
                ]

    def _usable(self) -> bool:
        if self._mode == "off":
            if not self._warned:
                log.warning(
                    "tasks here depend on other services but --haproxy is off: nothing serves their ports"
                )
                self._warned = True
            return False
        if find_haproxy(self._binary) is None:
            if not self._warned:
                log.warning("tasks here depend on other services but haproxy is not installed")
                self._warned = True
            return False
        return True
