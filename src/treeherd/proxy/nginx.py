"""One nginx master in its own prefix directory: validate a configuration with the real `nginx -t`,
start or adopt the master, reload it and tell whether the reload took, and why a master died or hung.

The master runs in the foreground (`daemon off`) as a child of this process, in its own session and
process group, which its workers share: its exit status is ours to read (`cause_of_death`: `master pid
123 died (signal 9, SIGKILL)`). It outlives its owner on purpose: a gateway that restarts adopts the
master named by the pid file instead of starting a second one (that master's exit status is then
unknown). When the master dies (SIGKILL leaves its workers serving the old configuration and holding
the ports), `end_leftovers` kills that group before a new master starts. A master that no longer acts
on signals (stopped, or silent on a reload signal) is `unresponsive`; `end_hung` ends its group.
A reload is a SIGHUP to the master; it took when the previous generation of workers starts its graceful
shutdown, and failed when the master logs an `[emerg]` or `[alert]` line instead (it then keeps
serving the previous configuration). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil

from treeherd.proxy.supervise import death_cause, end_group

VALIDATE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
DYING_WAIT_S = 2.0  # for a killed master to turn zombie before its leftovers are ended
KEPT_EXITS = 16  # exit statuses kept of the masters this process started
HUNG_AFTER_S = 1.0  # a master stopped this long (SIGSTOP, a tracer) no longer acts on signals
_STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
MAX_OUTPUT = 65_536  # bytes of nginx's own output kept for an error message
_FAILURE = re.compile(r"\[(emerg|alert|crit)\]")


class NginxError(Exception):
    """nginx refused a configuration or a command; the message is nginx's own reason."""


def find_nginx(binary: str = "nginx") -> str | None:
    """The nginx executable (PATH and the sbin directories, where Debian puts it), or None."""
    if os.sep in binary:
        return binary if os.access(binary, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which(binary, path=search)


def _reason(output: str) -> str:
    """nginx's error lines without the `nginx: ` prefixes and the closing 'test failed' line."""
    lines = [line.removeprefix("nginx: ").strip() for line in output.splitlines()]
    useful = [line for line in lines if line and "test failed" not in line and "syntax is ok" not in line]
    return "; ".join(useful) or "nginx gave no reason"


class Nginx:
    """The nginx master serving from `prefix`: its pid file and error log live in `prefix/logs`."""

    def __init__(self, binary: str, prefix: Path) -> None:
        self.binary = binary
        self.prefix = prefix
        self.main_conf = prefix / "nginx.conf"
        self.pid_path = prefix / "logs" / "nginx.pid"
        self.error_log = prefix / "logs" / "error.log"
        self.temp_dir = prefix / "temp"
        self.output = prefix / "logs" / "nginx.out"  # the master's own stderr (start-up errors)
        self._child: int | None = None  # the pid of the master this process started last
        self._exits: dict[int, int] = {}  # exit statuses of masters this process started and reaped
        self._stopped: tuple[int, float] | None = None  # a master seen stopped, and since when
        self._hung: tuple[int, str] | None = None  # a master that ignored a reload signal, and why
        self._causes: dict[int, str] = {}  # why masters this process ended had to go

    def _base_args(self, conf: Path) -> list[str]:
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.error_log)]

    async def _run(self, args: list[str], limit_s: float) -> tuple[int, str]:
        # Output goes to a file, not a pipe: a process nginx leaves behind could hold a pipe open, and
        # some event loops (uvloop, which `treeherd up` runs) then wait for its end.
        with tempfile.TemporaryFile() as output:
            process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT
            )
            try:
                async with asyncio.timeout(limit_s):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise NginxError(f"{' '.join(args[:2])} did not finish within {limit_s} s") from None
            output.seek(0)
            text = output.read(MAX_OUTPUT).decode(errors="replace")
        return process.returncode or 0, text

    async def validate(self, conf: Path) -> None:
        """Raise NginxError with nginx's reason unless `nginx -t` accepts the configuration `conf`."""
        code, output = await self._run([*self._base_args(conf), "-t", "-q"], VALIDATE_TIMEOUT_S)
        if code != 0:
            raise NginxError(_reason(output))

    def master_pid(self) -> int | None:
        """The pid of the live nginx master serving this prefix, or None."""
        try:
            pid = int(self.pid_path.read_text().strip())
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        if "nginx" not in cmdline or str(self.prefix) not in cmdline:
            return None  # a stale pid file: the number now belongs to another process
        return pid

    def recorded_pid(self) -> int | None:
        """The pid in the pid file, whether or not that process still runs."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _dead(self, pid: int) -> bool:
        """Is `pid` gone or a zombie? (A live pid is our master, or now belongs to someone else.)"""
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return True

    def _dying(self, pid: int) -> bool:
        """Is `pid` being torn down (still in the table, not a zombie, its command line already gone)?"""
        try:
            process = psutil.Process(pid)
            return process.status() != psutil.STATUS_ZOMBIE and not process.cmdline()
        except psutil.Error:
            return False

    async def end_leftovers(self, pid: int | None = None) -> int:
        """Kill what is left of the dead master `pid` (the pid file's by default): its workers still
        serve the old configuration and hold the ports a new master needs. Returns how many it ended."""
        pid = self.recorded_pid() if pid is None else pid
        if pid is None:
            return 0
        # A master killed a moment ago is torn down before it turns zombie: meanwhile it has no command
        # line and reads as neither live nor dead. Give it a bounded moment instead of leaving its workers.
        deadline = time.monotonic() + DYING_WAIT_S
        while time.monotonic() < deadline:
            if not self._dying(pid):
                break
            await asyncio.sleep(0.01)
        if not self._dead(pid):
            return 0
        try:
            return len(await end_group(pid, timeout_s=STOP_TIMEOUT_S))
        except TimeoutError as error:
            raise NginxError(f"what the dead nginx master {pid} left did not end: {error}") from None

    async def start(self) -> int:
        """End what a dead master left, start the master on the main configuration (already
        validated) as a child in its own session, and return its pid."""
        await self.end_leftovers()
        self.exit_status(None)  # reap the previous child, if it is done
        child = self._child = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.exit_status(child) is not None:
                raise NginxError(_reason(self._output()))
            # Ready once its workers run: a reload signal sent earlier may be lost in its start-up.
            if self.master_pid() == child and self._workers(child):
                self._causes.clear()
                return child
            await asyncio.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
        raise NginxError(f"nginx did not start its workers within {START_TIMEOUT_S} s (see {self.error_log})")

    def _spawn(self) -> int:
        """Start the master in its own session, its output to `self.output`; its pid. (Not a Popen or
        asyncio's subprocess: the master outlives this event loop and this process by design, and only
        its exit status is wanted, read without blocking by `exit_status`.)"""
        output = os.open(self.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            return os.posix_spawnp(
                self.binary,
                [*self._base_args(self.main_conf), "-g", "daemon off;"],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, output, 1),
                    (os.POSIX_SPAWN_DUP2, output, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(output)

    def _output(self) -> str:
        try:
            with open(self.output, "rb") as handle:
                return handle.read(MAX_OUTPUT).decode(errors="replace")
        except OSError:
            return ""

    def exit_status(self, pid: int | None) -> int | None:
        """The exit status of master `pid` (the last one started when None) if this process started it
        and it has ended (negative: the signal that ended it), else None. Reaps it."""
        pid = self._child if pid is None else pid
        if pid is None:
            return None
        if pid not in self._exits and pid == self._child:
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None  # not ours (any more)
            if waited == 0:
                return None  # still running
            self._exits[pid] = os.waitstatus_to_exitcode(status)
            for old in list(self._exits)[
                :-KEPT_EXITS
            ]:  # a crash loop starts many; the first one's is asked for
                del self._exits[old]
        return self._exits.get(pid)

    def cause_of_death(self, pid: int) -> str:
        """Why master `pid` is gone: what `end_hung` found, or its exit status when it was our child."""
        if pid in self._causes:
            return self._causes[pid]
        return death_cause(pid, self.exit_status(pid))

    def unresponsive(self, pid: int, now: float) -> str | None:
        """Why the live master `pid` must be treated as dead: stopped (SIGSTOP, a tracer) for
        HUNG_AFTER_S, or it ignored a reload signal; None while it acts on signals. `now` is
        monotonic seconds."""
        if self._hung is not None and self._hung[0] == pid:
            return self._hung[1]
        try:
            status = psutil.Process(pid).status()
        except psutil.Error:
            return None
        if status not in _STOPPED:
            self._stopped = None
            return None
        if self._stopped is None or self._stopped[0] != pid:
            self._stopped = (pid, now)
        if now - self._stopped[1] < HUNG_AFTER_S:
            return None
        return f"master pid {pid} stopped acting on signals (process state {status} for {now - self._stopped[1]:.1f} s)"

    async def end_hung(self, pid: int, cause: str) -> None:
        """End the unresponsive master `pid` and its workers (SIGKILL to its group, stopped members
        included); `cause` is what `cause_of_death` says of it afterwards."""
        self._causes[pid] = cause
        self._hung = None
        self._stopped = None
        try:
            await end_group(pid, timeout_s=STOP_TIMEOUT_S)
        except TimeoutError as error:
            raise NginxError(f"the unresponsive nginx master {pid} did not end: {error}") from None
        self.exit_status(pid)  # reap it

    def _workers(self, pid: int) -> set[int]:
        with contextlib.suppress(psutil.Error):
            return {child.pid for child in psutil.Process(pid).children()}
        return set()

    def _retiring(self, workers: set[int]) -> bool:
        """Has any of these workers exited or begun its graceful shutdown? (The master retires the old
        generation only once the new configuration is in place.)"""
        for worker in workers:
            try:
                if "shutting down" in " ".join(psutil.Process(worker).cmdline()):
                    return True
            except psutil.Error:
                return True
        return False

    def _error_log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _new_failures(self, offset: int) -> str:
        try:
            with open(self.error_log, "rb") as handle:
                handle.seek(offset)
                text = handle.read(65536).decode(errors="replace")
        except OSError:
            return ""
        failures = [line.strip() for line in text.splitlines() if _FAILURE.search(line)]
        return "; ".join(failures)

    async def reload(self, limit_s: float = RELOAD_TIMEOUT_S) -> None:
        """SIGHUP the master and wait for new workers; NginxError with the master's reason if it kept
        the previous configuration."""
        pid = self.master_pid()
        if pid is None:
            raise NginxError(f"no nginx master is running for {self.prefix}")
        before = self._workers(pid)
        offset = self._error_log_size()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            failure = self._new_failures(offset)
            if failure:
                raise NginxError(failure)
            if self._retiring(before):
                return
            if self.master_pid() != pid:
                raise NginxError("the nginx master exited during the reload")
            hung = self.unresponsive(pid, time.monotonic())
            if hung is not None:
                raise NginxError(hung)
        self._hung = (pid, f"master pid {pid} did not act on a reload signal within {limit_s:g} s")
        raise NginxError(f"nginx did not retire its workers within {limit_s} s of the reload signal")

    async def stop(self) -> None:
        """Graceful stop (SIGQUIT), SIGKILL to its group if the master outlives the timeout; what a
        dead master left is killed."""
        pid = self.master_pid()
        if pid is None:
            await self.end_leftovers()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._dead(pid):
                break
            await asyncio.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        await self.end_leftovers(pid)
        self.exit_status(pid)  # reap it
