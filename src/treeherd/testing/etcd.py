"""A real etcd for tests and benchmarks, one member (`EtcdProcess`) or several (`EtcdCluster`): each
member its own data directory and free loopback ports (or, given a `host` of treeherd.testing.hosts,
that host's address), stopped by pid, every wait bounded. Needs the `etcd` binary (Debian package
etcd-server)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from treeherd.testing.ports import free_port

if TYPE_CHECKING:
    from treeherd.testing.hosts import Host

STARTUP_SECONDS = 15.0
STOP_SECONDS = 10.0


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdProcess:
    """`etcd` serving clients on 127.0.0.1 (in a `host`: on its address); `endpoint` is `ADDRESS:PORT`
    once started. Started again after `stop()`, it serves the same data on the same ports."""

    def __init__(
        self,
        directory: Path,
        *,
        extra_args: tuple[str, ...] = (),
        name: str = "test",
        token: str = "",
        host: Host | None = None,
    ) -> None:
        self.directory = directory
        self.host = host
        self.address = host.address if host is not None else "127.0.0.1"
        self.extra_args = extra_args
        self.name = name
        self.initial_cluster = ""  # NAME=PEER_URL,...: set by `EtcdCluster`; this member alone otherwise
        self.token = token
        self.process: subprocess.Popen[bytes] | None = None
        self.client_port = 0
        self.peer_port = 0
        self.log_path = directory / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.client_port}"

    def url(self, prefix: str = "/treeherd") -> str:
        """The `--store` URL of a cluster kept under `prefix` in this etcd."""
        return f"etcd://{self.endpoint}?prefix={prefix}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{self.peer_port}"

    def start(self) -> EtcdProcess:
        self.spawn()
        self.wait_healthy()
        return self

    def take_ports(self) -> None:
        if not self.client_port:  # a restart keeps its ports (and its data)
            self.client_port, self.peer_port = free_port(), free_port()

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed: apt-get install etcd-server (make system-deps does)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.take_ports()
        client_url = f"http://{self.endpoint}"
        peer_url = self.peer_url
        cluster = self.initial_cluster or f"{self.name}={peer_url}"
        token = [f"--initial-cluster-token={self.token}"] if self.token else []
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            args = [
                binary,
                f"--name={self.name}",
                f"--data-dir={self.directory / 'data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={cluster}",
                *token,
                "--log-level=warn",
                *self.extra_args,
            ]
            if self.host is not None:
                self.process = self.host.popen(
                    args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            else:
                self.process = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        finally:
            log.close()

    def wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"etcd did not become healthy within {STARTUP_SECONDS} s:\n{self.log()}")

    def _healthy(self) -> bool:
        url = f"http://{self.endpoint}/health"
        try:
            if self.host is not None:
                return b'"true"' in self.host.http_get(url, timeout=1)[1]
            with urllib.request.urlopen(url, timeout=1) as response:
                return b'"true"' in response.read()
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL by pid (no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_SECONDS)

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL if it has not exited in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_SECONDS)

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class EtcdCluster:
    """`size` etcd members on loopback (or one in each of `hosts`) forming one cluster; `url()` names
    every member's endpoint."""

    def __init__(
        self, directory: Path, size: int = 3, *, hosts: Sequence[Host] = (), extra_args: tuple[str, ...] = ()
    ) -> None:
        placed: Sequence[Host | None] = hosts or [None] * size
        self.members = [
            EtcdProcess(
                directory / f"member-{index}",
                name=f"member-{index}",
                token=directory.name,
                host=host,
                extra_args=extra_args,
            )
            for index, host in enumerate(placed)
        ]

    def url(self, prefix: str = "/treeherd") -> str:
        return f"etcd://{','.join(m.endpoint for m in self.members)}?prefix={prefix}"

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.take_ports()
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                member.initial_cluster = cluster
                member.spawn()
            for member in self.members:  # a member is healthy once the cluster has a leader
                member.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
