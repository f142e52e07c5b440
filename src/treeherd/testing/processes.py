"""Real treeherd processes for end-to-end tests and benchmarks: started in a temp dir on a free
loopback port, stopped by pid, every wait bounded. Given a `host` (treeherd.testing.hosts), each runs
inside that host's network namespace instead, on the host's address."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from treeherd.testing.hosts import Host

STARTUP_SECONDS = 20.0
STOP_SECONDS = 10.0


def treeherd_command() -> list[str]:
    """How to run this treeherd: the interpreter running the tests, so the same install is used."""
    return [sys.executable, "-m", "treeherd"]


def _popen(args: list[str], host: Host | None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen of `args` here, or inside `host` when one is given (the pid is the command's either way)."""
    return host.popen(args, **kwargs) if host is not None else subprocess.Popen(args, **kwargs)


class ManagerProcess:
    """`treeherd manager` (or `up`) on `127.0.0.1:0` (in a `host`: on the host's address, port 0); the URL
    is read from the data directory once it listens."""

    def __init__(
        self,
        data_dir: Path,
        *,
        listen: str | None = None,
        command: tuple[str, ...] = ("manager",),
        extra_args: tuple[str, ...] = (),
        host: Host | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.command = command
        self.host = host
        self.listen = listen or (f"{host.address}:0" if host is not None else "127.0.0.1:0")
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}-manager.log"

    def start(self, timeout: float = STARTUP_SECONDS) -> ManagerProcess:
        """Start it; returns once `/healthz` answers 200 (or raises after `timeout` seconds)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        url_file = self.data_dir / "manager.url"
        url_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = _popen(
                [
                    *treeherd_command(),
                    *self.command,
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    self.listen,
                    *self.extra_args,
                ],
                self.host,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the manager exited with {self.process.returncode}:\n{self.log()}")
            if url_file.exists() and (text := url_file.read_text().strip()):
                self.url = text
                if self._healthy():
                    return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"the manager did not start within {timeout} s:\n{self.log()}")

    def _healthy(self) -> bool:
        if self.host is not None:
            try:
                return self.host.http_get(self.url + "/healthz", timeout=2)[0] == 200
            except OSError:
                return False
        context = None
        if self.url.startswith("https://"):
            context = ssl.create_default_context(cafile=str(self.data_dir / "ca.crt"))
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = "\n".join(self.log().splitlines()[-15:])
            raise AssertionError(
                f"{' '.join(self.command)} did not stop within {timeout} s of SIGTERM; its log ends:\n{tail}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process group (no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(STOP_SECONDS)

    def __enter__(self) -> ManagerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


class AgentProcess:
    """`treeherd agent` for one named host, in its own data directory, stopped by pid."""

    def __init__(
        self,
        manager_url: str,
        data_dir: Path,
        hostname: str,
        *,
        executor: str = "hollow",
        labels: tuple[str, ...] = (),
        host: Host | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.env = env  # added to this process's environment (a token file, say)
        self.extra_args = extra_args
        self.manager_url = manager_url
        self.data_dir = data_dir
        self.hostname = hostname
        self.executor = executor
        self.labels = labels
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-agent.log"

    def start(self) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        label_args = [arg for label in self.labels for arg in ("--label", label)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = _popen(
                [
                    *treeherd_command(),
                    "agent",
                    "--manager",
                    self.manager_url,
                    "--data-dir",
                    str(self.data_dir),
                    "--hostname",
                    self.hostname,
                    "--executor",
                    self.executor,
                    *label_args,
                    *self.extra_args,
                ],
                self.host,
                env=None if self.env is None else {**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(STOP_SECONDS)


class GatewayProcess:
    """`treeherd gateway run` with its own nginx prefix on 127.0.0.1 (in a `host`: on the host's address),
    fast timings for tests and benchmarks; stopped by pid. Its nginx outlives it (as in production) until
    `stop_nginx`."""

    def __init__(
        self,
        manager_url: str,
        prefix: Path,
        *,
        health_interval_s: float = 0.2,
        probe_interval_s: float | None = 0.2,
        extra_args: tuple[str, ...] = (),
        host: Host | None = None,
        listen_host: str | None = None,
    ) -> None:
        self.host = host
        self.listen_host = listen_host or (host.address if host is not None else "127.0.0.1")
        self.prefix = prefix
        self.log_path = prefix.parent / f"{prefix.name}-gateway.log"
        probes = ("--probe-interval", str(probe_interval_s)) if probe_interval_s is not None else ()
        self.args = [
            *treeherd_command(), "--manager", manager_url, "gateway", "run", "--nginx-prefix", str(prefix),
            "--listen-host", self.listen_host, "--min-wait", "0.05", "--max-wait", "0.5",
            "--health-interval", str(health_interval_s), *probes, *extra_args,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = _popen(
                self.args, self.host, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def nginx_pid(self) -> int | None:
        try:
            pid = int((self.prefix / "logs" / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def kill(self) -> None:
        """SIGKILL the gateway process alone (its nginx keeps serving)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)

    def stop(self) -> None:
        """Stop the gateway (SIGTERM, then SIGKILL to its group); nginx keeps running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_SECONDS)

    def stop_nginx(self) -> None:
        """End the nginx this gateway left (its master's process group), by the pid in its pid file."""
        pid = self.nginx_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(STOP_SECONDS)


def processes_under(directory: Path) -> list[psutil.Process]:
    """Live processes whose working directory is inside `directory` (the process executor starts a
    task in its own directory under the agent's data directory), or whose command line names a path
    inside it (an nginx or haproxy run on a prefix there, which works from `/`)."""
    root = str(directory.resolve())
    found = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        cwd = process.info.get("cwd") or ""
        cmdline = process.info.get("cmdline") or []
        if process.pid == os.getpid():
            continue
        if cwd == root or cwd.startswith(root + os.sep) or any(root + os.sep in arg for arg in cmdline[1:]):
            found.append(process)
    return found


def reap_processes_under(directory: Path) -> int:
    """SIGKILL every process `processes_under(directory)` finds (and its process group); returns how
    many there were. Task processes outlive their agent by design, so tests clean up with this."""
    victims = processes_under(directory)
    for process in victims:
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(victims, timeout=STOP_SECONDS)
    return len(victims)
