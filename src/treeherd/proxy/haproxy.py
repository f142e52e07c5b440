"""The local haproxy of one host (D3): brings a running haproxy to a desired `LocalProxy`, through the
runtime API when only servers change and through a checked, hitless reload when the frontends change.

Invariants:
- every configuration haproxy loads passed `haproxy -c` first; one it rejects never replaces the running
  one (the error is raised, the old configuration keeps serving);
- the configuration file always holds every current server, so a reload loses none of the servers that
  runtime commands added;
- a removed server leaves the rotation at once (maintenance) and is deleted once its connections are gone,
  or after `drain_timeout_s` by shutting its sessions; this happens in the background, so `apply` never
  waits for a client's connection;
- a runtime command haproxy refuses (its state differs from ours) falls back to a reload of the whole
  desired state, which converges whatever haproxy had;
- `supervise` notices a master that exited, or stops answering `show proc` on its CLI socket, within
  `watch_interval_s` (plus the CLI timeout), ends its process group (workers included) and starts a fresh
  master on the state last applied; one that dies again right after is restarted after a growing
  delay (`proxy.supervise`), logged as a crash loop (the loop: `proxy.haproxy_supervisor`);
- `adopt` keeps a master an earlier owner left serving on the same directory (never restarting it):
  its servers are read from haproxy (`show servers state`), its frontends from the configuration file
  it loaded, and `apply` then converges it like any other (runtime API, or a checked hitless reload
  when the frontends differ); it is supervised like a started one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from treeherd.proxy.master import HaproxyFailed, HaproxyMaster, check_config, find_haproxy
from treeherd.proxy.plan import plan_changes, served_state, servers_of
from treeherd.proxy.runtime import RuntimeApiError, RuntimeCall, call, query
from treeherd.proxy.stats import ProcTable, ServerState, StatRow, servers_state, stat
from treeherd.proxy.supervise import death_cause
from treeherd.render.haproxy import (
    HaproxyOptions,
    LocalProxy,
    ProxyServer,
    frontends_of_config,
    render_haproxy,
    validate_local_proxy,
    validate_options,
)

__all__ = ["ApplyResult", "HaproxyConfigRejected", "LocalHaproxy"]

log = logging.getLogger(__name__)
Renderer = Callable[[LocalProxy, HaproxyOptions], str]
DRAIN_POLL_S = 0.1
WATCH_INTERVAL_S = 0.2
CLI_TIMEOUT_S = 1.0
SILENT_CHECKS = 2  # `show proc` unanswered this many times in a row: the master is taken for dead


class HaproxyConfigRejected(HaproxyFailed):
    """`haproxy -c` refused a rendered configuration; the running one is unchanged."""


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one `apply` did: the runtime commands sent (in order, with replies and times), whether it
    reloaded (and why a reload replaced runtime commands, if it did), the worker serving now, the
    servers deleted and those still draining, and timings in milliseconds."""

    commands: list[RuntimeCall]
    reloaded: bool
    worker_pid: int
    deleted: list[str] = []
    draining: list[str] = []
    fallback: str = ""
    check_ms: float = 0.0
    reload_ms: float = 0.0
    total_ms: float = 0.0


class LocalHaproxy:
    """One haproxy master-worker process whose files (configuration, pid file, sockets, log) live in
    `workdir`. `start`, then `apply` as often as the desired state changes, then `stop`."""

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str = "haproxy",
        options: HaproxyOptions | None = None,
        drain_timeout_s: float = 10.0,
        renderer: Renderer = render_haproxy,
    ) -> None:
        self.workdir = workdir
        admin_socket = workdir / "admin.sock"
        base = options or HaproxyOptions(admin_socket=str(admin_socket))
        self.options = msgspec.structs.replace(base, admin_socket=str(admin_socket))
        self.binary = binary
        self.drain_timeout_s = drain_timeout_s
        self._render = renderer
        self.config = workdir / "haproxy.cfg"
        self._candidate = workdir / "haproxy.cfg.new"
        self._master = HaproxyMaster(
            binary,
            config=self.config,
            pid_file=workdir / "haproxy.pid",
            master_socket=workdir / "master.sock",
            admin_socket=admin_socket,
            log_file=workdir / "haproxy.log",
        )
        self._lock = asyncio.Lock()
        self._frontends: dict[str, int] = {}
        self._servers: dict[str, dict[str, tuple[ProxyServer, bool]]] = {}
        self._draining: dict[str, tuple[ProxyServer, float]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._worker_pid = 0
        self._state = LocalProxy()
        self._silent = 0
        self._wanted = False  # started and not stopped: a missing master is a dead one
        self.last_drain_error = ""
        self.restarts = 0

    @property
    def admin_socket(self) -> str:
        return self.options.admin_socket

    @property
    def master_socket(self) -> str:
        return str(self._master.master_socket)

    @property
    def master_pid(self) -> int | None:
        return self._master.pid

    @property
    def worker_pid(self) -> int:
        """The worker serving the current configuration (0 before `start`)."""
        return self._worker_pid

    async def start(self, initial: LocalProxy | None = None) -> ApplyResult:
        """Render and check `initial` (no frontends by default) and start haproxy on it."""
        started = time.perf_counter()
        state = initial or LocalProxy()
        validate_options(self.options)
        validate_local_proxy(state)
        found = find_haproxy(self.binary)
        if found is None:
            raise HaproxyFailed(f"{self.binary} is not installed (Debian package haproxy)")
        self._refuse_a_running_leftover()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The configuration, pid file, log and the two sockets (themselves 0600) are this user's only.
        self.workdir.chmod(0o700)
        self._master.binary = found
        check_ms = await self._write_checked(self._render(state, self.options))
        self._candidate.replace(self.config)
        self._worker_pid = await self._master.start()
        self._wanted = True
        self._adopt(state)
        return ApplyResult(
            commands=[], reloaded=False, worker_pid=self._worker_pid, check_ms=check_ms, total_ms=_ms(started)
        )

    async def adopt(self) -> LocalProxy | None:
        """Take over the haproxy an earlier run left serving on this directory (alive, haproxy, answering
        its master socket) and return what it serves (frontends by haproxy name, their servers out of
        maintenance), for the caller to `apply` the desired state onto; None when there is nothing to
        adopt (then `start`)."""
        validate_options(self.options)
        found = find_haproxy(self.binary)
        if found is None:
            raise HaproxyFailed(f"{self.binary} is not installed (Debian package haproxy)")
        self._master.binary = found
        worker = await self._master.adopt()
        if worker is None:
            return None
        try:
            rows = await servers_state(self.admin_socket)
            frontends = frontends_of_config(self.config.read_text())
        except (RuntimeApiError, ValueError, OSError):
            await self._master.end()
            return None
        self._worker_pid = worker
        self._wanted = True
        self._silent = 0
        self._frontends = frontends
        self._servers, serving = served_state(frontends, rows)
        self._draining.clear()
        self._state = serving
        log.info("adopted haproxy master pid %d", self._master.pid)
        return serving

    async def apply(self, state: LocalProxy) -> ApplyResult:
        """Bring haproxy to `state`: runtime commands when the frontends (names and ports) are the same,
        else one checked reload. Raises `LocalProxyInvalid` on bad input, `HaproxyConfigRejected` or
        `HaproxyFailed` when the new configuration cannot be loaded (the old one keeps serving)."""
        validate_local_proxy(state)
        async with self._lock:
            if self._master.pid is None:
                raise HaproxyFailed("the local haproxy is not running")
            started = time.perf_counter()
            before = self._view()
            plan = plan_changes(self._frontends, before, state, self.options)
            if plan.reload:
                return await self._reload(state, started, commands=[], fallback="")
            calls: list[RuntimeCall] = []
            try:
                for command in plan.commands:
                    calls.append(await call(self.admin_socket, command))
            except RuntimeApiError as error:
                return await self._reload(state, started, commands=calls, fallback=error.detail)
            wanted = servers_of(state)
            for target in list(self._draining):
                proxy, name = target.split("/", 1)
                if name in wanted.get(proxy, {}):
                    del self._draining[target]  # wanted again: the plan re-enabled it
            self._servers = wanted
            self._state = state
            deadline = time.monotonic() + self.drain_timeout_s
            for target in plan.removals:
                proxy, name = target.split("/", 1)
                self._draining[target] = (before[proxy][name][0], deadline)
            deleted = await self._delete_drained(calls)
            self._start_drainer()
            return ApplyResult(
                commands=calls,
                reloaded=False,
                worker_pid=self._worker_pid,
                deleted=deleted,
                draining=sorted(self._draining),
                total_ms=_ms(started),
            )

    async def stop(self) -> None:
        """Stop the drain task and haproxy (by its master's pid)."""
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
        self._wanted = False
        if self._master.exited:
            await self._master.end()  # a dead master's workers may outlive it
        else:
            await self._master.stop()
        self._worker_pid = 0

    async def servers_state(self) -> list[ServerState]:
        """haproxy's own view of its servers."""
        return await servers_state(self.admin_socket)

    async def workers(self) -> ProcTable:
        """The master's view of its workers and reloads."""
        return await self._master.workers()

    async def stat(self) -> list[StatRow]:
        """haproxy's `show stat` rows."""
        return await stat(self.admin_socket)

    async def dead_master(self) -> str | None:
        """Why the started master is dead (exited, or silent on its CLI socket `SILENT_CHECKS` times
        in a row), or None while it is fine or was never started."""
        if not self._wanted:
            return None
        pid = self._master.started_pid
        if pid is None:
            return "no master is running (its last start failed)"
        if self._master.exited:
            return death_cause(pid, self._master.returncode)
        if self._lock.locked():
            return None  # a reload is under way: the master re-executes itself and may not answer
        async with self._lock:
            try:
                await self._master.workers(timeout_s=CLI_TIMEOUT_S)
            except (RuntimeApiError, ValueError) as error:
                self._silent += 1
                if self._silent >= SILENT_CHECKS:
                    return f"master pid {pid} stopped answering its CLI socket ({error})"
                return None
        self._silent = 0
        return None

    async def restart(self) -> ApplyResult:
        """End the master and what is left of it, and start a fresh one on the state last applied."""
        async with self._lock:
            started_at = time.perf_counter()
            await self._master.end()
            self._silent = 0
            self._wanted = True
            check_ms = await self._write_checked(self._render(self._state, self.options))
            self._candidate.replace(self.config)
            self._worker_pid = await self._master.start()
            self._adopt(self._state)
            self.restarts += 1
            return ApplyResult(
                commands=[], reloaded=False, worker_pid=self._worker_pid, check_ms=check_ms,
                total_ms=_ms(started_at),
            )  # fmt: skip

    async def wait_exit(self, timeout_s: float) -> None:
        """Return when the master exits, or after `timeout_s` (an exit is seen at once)."""
        await self._master.wait_exit(timeout_s)

    async def end_master(self) -> None:
        """End the master and its process group (workers included), between reloads."""
        async with self._lock:
            await self._master.end()

    def _view(self) -> dict[str, dict[str, tuple[ProxyServer, bool]]]:
        view = {proxy: dict(servers) for proxy, servers in self._servers.items()}
        for target, (server, _) in self._draining.items():
            proxy, name = target.split("/", 1)
            view.setdefault(proxy, {})[name] = (server, True)
        return view

    def _adopt(self, state: LocalProxy) -> None:
        self._state = state
        self._frontends = state.frontend_ports()
        self._servers = servers_of(state)
        self._draining.clear()

    async def _write_checked(self, text: str) -> float:
        self._candidate.write_text(text)
        verdict = await check_config(self._master.binary, self._candidate)
        if not verdict.valid:
            raise HaproxyConfigRejected(f"haproxy -c rejected the new configuration:\n{verdict.output}")
        return verdict.ms

    async def _reload(
        self, state: LocalProxy, started: float, *, commands: list[RuntimeCall], fallback: str
    ) -> ApplyResult:
        check_ms = await self._write_checked(self._render(state, self.options))
        previous = self.config.read_bytes()
        self._candidate.replace(self.config)
        reload_started = time.perf_counter()
        try:
            self._worker_pid = await self._master.reload()
        except HaproxyFailed:
            self.config.write_bytes(previous)  # what the running worker serves, for the next reload
            raise
        reload_ms = _ms(reload_started)
        self._adopt(state)
        return ApplyResult(
            commands=commands,
            reloaded=True,
            worker_pid=self._worker_pid,
            fallback=fallback,
            check_ms=check_ms,
            reload_ms=reload_ms,
            total_ms=_ms(started),
        )

    async def _delete_drained(self, calls: list[RuntimeCall] | None = None) -> list[str]:
        """Try `del server` on every draining server; past its deadline, shut its sessions first."""
        deleted: list[str] = []
        now = time.monotonic()
        for target, (_, deadline) in sorted(self._draining.items()):
            command = f"del server {target}"
            started = time.perf_counter()
            try:
                if now >= deadline:
                    await call(self.admin_socket, f"shutdown sessions server {target}")
                reply = (await query(self.admin_socket, command)).strip()
            except RuntimeApiError as error:
                self.last_drain_error = error.detail
                continue
            if reply.startswith(("Server deleted.", "No such server")):
                del self._draining[target]
                deleted.append(target)
                if calls is not None:
                    calls.append(RuntimeCall(command=command, reply=reply, ms=_ms(started)))
            elif now >= deadline:
                self.last_drain_error = f"{command}: {reply}"
        return deleted

    def _start_drainer(self) -> None:
        if self._draining and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.create_task(self._drain_loop(), name="haproxy-drain")

    async def _drain_loop(self) -> None:
        while self._draining:
            await asyncio.sleep(DRAIN_POLL_S)
            async with self._lock:
                await self._delete_drained()

    def _refuse_a_running_leftover(self) -> None:
        pid_file = self._master.pid_file
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if b"haproxy" in cmdline and str(self.config).encode() in cmdline:
            raise HaproxyFailed(f"a haproxy from an earlier run (pid {pid}) still uses {self.workdir}")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
