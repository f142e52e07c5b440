"""One haproxy master-worker process: check a configuration with the real binary, start the master,
reload it hitlessly through its CLI, stop it by pid.

The master (`haproxy -W -S MASTER_SOCKET -f CONFIG -p PIDFILE`) runs in its own session so signals meant
for its parent do not reach it. A reload re-reads CONFIG and forks a new worker, which takes the
listening sockets over from the old one (no refused connection); the old worker finishes its
connections and exits. A reload that fails in the master (a port another process holds: `haproxy -c`
does not bind) leaves the old worker serving; `reload` reports it by the master's failed-reload count.
Its workers share the master's process group, so `end` kills what is left of a dead or silent master
(SIGKILL to the group) before a new one takes the ports.

`adopt` takes over a master an earlier owner started on the same files (that owner was killed, the
master kept serving): it is kept only when its pid file names a live haproxy on this configuration whose
master socket answers. An adopted master is not this process's child, so its death is seen by polling
its pid, not by waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import msgspec
import psutil

from treeherd.model.errors import Unavailable
from treeherd.proxy.runtime import RuntimeApiError, query
from treeherd.proxy.stats import ProcTable, info, proc
from treeherd.proxy.supervise import end_group

__all__ = ["ConfigCheck", "HaproxyFailed", "HaproxyMaster", "check_config", "find_haproxy"]

POLL_S = 0.01
ADOPTED_POLL_S = 0.05  # how often an adopted master's pid is looked at


class HaproxyFailed(Unavailable):
    """haproxy would not start, reload or check a configuration; `detail` carries its own words."""


class ConfigCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict of `haproxy -c` on one file, haproxy's messages and how long it took."""

    valid: bool
    output: str
    ms: float


def find_haproxy(binary: str = "haproxy") -> str | None:
    """The haproxy executable (a path is taken as is; a bare name is looked up in PATH and the sbin
    directories, which a non-root PATH may lack), or None when it is not installed."""
    if "/" in binary:
        return binary if os.access(binary, os.X_OK) else None
    for directory in (None, "/usr/sbin", "/usr/local/sbin"):
        found = shutil.which(binary, path=directory)
        if found:
            return found
    return None


def _messages(output: str) -> str:
    """haproxy's alerts (or its whole output when there are none), one per line."""
    alerts = [line.strip() for line in output.splitlines() if "[ALERT]" in line]
    return "\n".join(alerts) if alerts else output.strip()


async def check_config(binary: str, config: Path, *, timeout_s: float = 30.0) -> ConfigCheck:
    """Run `haproxy -c -f CONFIG`: valid only when it exits 0."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        "-f",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise HaproxyFailed(f"haproxy -c did not finish within {timeout_s:g}s") from None
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    text = output.decode(errors="replace")
    return ConfigCheck(valid=process.returncode == 0, output=_messages(text), ms=elapsed)


class HaproxyMaster:
    """The master process of one local haproxy and its two sockets."""

    def __init__(
        self,
        binary: str,
        *,
        config: Path,
        pid_file: Path,
        master_socket: Path,
        admin_socket: Path,
        log_file: Path,
    ) -> None:
        self.binary = binary
        self.config = config
        self.pid_file = pid_file
        self.master_socket = master_socket
        self.admin_socket = admin_socket
        self.log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._adopted: int | None = None  # the pid of a master an earlier owner started

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        if self._adopted is not None:
            return self._adopted if _alive(self._adopted) else None
        return self._process.pid if self._process and self._process.returncode is None else None

    @property
    def exited(self) -> bool:
        """Whether the started or adopted master is gone."""
        if self._adopted is not None:
            return not _alive(self._adopted)
        return self._process is not None and self._process.returncode is not None

    @property
    def returncode(self) -> int | None:
        """The master's exit status once it exited (negative: the signal that ended it), else None
        (also for an adopted master, whose status only its parent learns)."""
        return self._process.returncode if self._process else None

    @property
    def started_pid(self) -> int | None:
        """The pid of the master this object started or adopted, alive or not (None: never started
        or stopped)."""
        if self._adopted is not None:
            return self._adopted
        return self._process.pid if self._process else None

    async def wait_exit(self, timeout_s: float) -> None:
        """Return when the master exits or after `timeout_s`, whichever comes first."""
        if self._adopted is not None:
            await _wait_gone(self._adopted, timeout_s)
            return
        process = self._process
        if process is None or process.returncode is not None:
            await asyncio.sleep(timeout_s)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await process.wait()

    async def end(self, *, timeout_s: float = 10.0) -> None:
        """Kill the master and every process of its group (its workers, which may outlive it) and
        wait until they are gone; the next `start` begins afresh."""
        process, self._process = self._process, None
        adopted, self._adopted = self._adopted, None
        if process is None and adopted is None:
            return
        try:
            if adopted is not None:
                await end_group(adopted, timeout_s=timeout_s)
            if process is not None:
                await end_group(process.pid, timeout_s=timeout_s)
                async with asyncio.timeout(timeout_s):
                    await process.wait()
        except TimeoutError as error:
            raise HaproxyFailed(f"haproxy did not end: {error}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The end of haproxy's own output: what it said before failing."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, *, timeout_s: float = 10.0) -> int:
        """Start the master on `config` and return its worker's pid once both sockets answer."""
        if self._process is not None or self._adopted is not None:
            raise HaproxyFailed("this haproxy is already started")
        for stale in (self.master_socket, self.admin_socket, self.pid_file):
            stale.unlink(missing_ok=True)
        with self.log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                "-W",
                "-f",
                str(self.config),
                "-p",
                str(self.pid_file),
                "-S",
                f"{self.master_socket},mode,600",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self._process.returncode is not None:
                        raise HaproxyFailed(
                            f"haproxy exited with status {self._process.returncode}:\n{self.log_tail()}"
                        )
                    with contextlib.suppress(RuntimeApiError, ValueError):
                        table = await self.workers(timeout_s=1.0)
                        if table.current:
                            await self._wait_for_admin_socket(table.current[0])
                            return table.current[0]
                    await asyncio.sleep(POLL_S)
        except TimeoutError:
            await self.stop()
            raise HaproxyFailed(f"haproxy did not answer on its admin socket within {timeout_s:g}s") from None

    async def adopt(self, *, timeout_s: float = 2.0) -> int | None:
        """Take over the master the pid file names when it is a live haproxy on `config` whose master
        socket answers `show proc` as that pid with a worker, and that worker answers the admin socket;
        returns that worker's pid, or None (nothing adopted: the caller ends what is left and starts)."""
        if self._process is not None or self._adopted is not None:
            raise HaproxyFailed("this haproxy is already started")
        try:
            pid = int(self.pid_file.read_text().split()[0])
            master = psutil.Process(pid)
            cmdline = master.cmdline()
            if master.status() == psutil.STATUS_ZOMBIE:
                return None
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        if not cmdline or "haproxy" not in Path(cmdline[0]).name or str(self.config) not in cmdline:
            return None  # the pid was reused by something else
        try:
            async with asyncio.timeout(timeout_s):
                table = await self.workers(timeout_s=timeout_s)
                if table.master_pid != pid or not table.current:
                    return None
                await self._wait_for_admin_socket(table.current[0])
        except (TimeoutError, RuntimeApiError, ValueError):
            return None
        self._adopted = pid
        return table.current[0]

    async def workers(self, *, timeout_s: float = 5.0) -> ProcTable:
        """The master's `show proc`."""
        return await proc(str(self.master_socket), timeout_s=timeout_s)

    async def reload(self, *, timeout_s: float = 10.0) -> int:
        """Reload the configuration file and return the new worker's pid once it answers on the admin
        socket; raises `HaproxyFailed` (the old worker still serving) when the master could not load it."""
        before = await self.workers()
        with contextlib.suppress(RuntimeApiError):  # the master re-executes itself: it may cut the line
            await query(str(self.master_socket), "reload", timeout_s=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                new_pid = await self._wait_for_new_worker(before)
                await self._wait_for_admin_socket(new_pid)
                return new_pid
        except TimeoutError:
            raise HaproxyFailed(f"haproxy did not finish reloading within {timeout_s:g}s") from None

    async def _wait_for_new_worker(self, before: ProcTable) -> int:
        while True:
            with contextlib.suppress(RuntimeApiError, ValueError):
                table = await self.workers(timeout_s=1.0)
                if table.failed_reloads > before.failed_reloads:
                    raise HaproxyFailed(f"haproxy could not load the new configuration:\n{self.log_tail(8)}")
                fresh = [pid for pid in table.current if pid not in before.current]
                if table.reloads > before.reloads and fresh:
                    return fresh[0]
            await asyncio.sleep(POLL_S)

    async def _wait_for_admin_socket(self, worker_pid: int) -> None:
        """Until the admin socket is answered by `worker_pid`: the old worker has let go of it."""
        answered = 0
        while answered != worker_pid:
            with contextlib.suppress(RuntimeApiError):
                answered = int((await info(str(self.admin_socket), timeout_s=1.0)).get("Pid", "0"))
            if answered != worker_pid:
                await asyncio.sleep(POLL_S)

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM to the master (it stops its workers), SIGKILL to its process group after `timeout_s`."""
        adopted, self._adopted = self._adopted, None
        if adopted is not None:
            await self._stop_adopted(adopted, timeout_s)
            return
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        self.pid_file.unlink(missing_ok=True)

    async def _stop_adopted(self, pid: int, timeout_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        await _wait_gone(pid, timeout_s)
        with contextlib.suppress(TimeoutError):
            await end_group(pid, timeout_s=timeout_s)  # workers the master left behind
        self.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie is dead: only its parent, not us, can reap it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _wait_gone(pid: int, timeout_s: float) -> None:
    """Return once `pid` is dead or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not _alive(pid):
            return
        await asyncio.sleep(min(ADOPTED_POLL_S, left))
