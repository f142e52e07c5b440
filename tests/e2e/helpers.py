"""What the end-to-end tests share: a real manager and agent processes on loopback, bounded waits."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treeherd.testing.processes import AgentProcess, ManagerProcess, treeherd_command
from treeherd.transport.client import Client

WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class Cluster:
    def __init__(self, tmp: Path, *, executor: str = "hollow", port: int | None = None) -> None:
        self.tmp = tmp
        self.executor = executor
        self.port = port or free_port()
        self.manager = ManagerProcess(tmp / "manager", listen=f"127.0.0.1:{self.port}")
        self.agents: dict[str, AgentProcess] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_agent(self, host: str) -> AgentProcess:
        agent = AgentProcess(self.url, self.tmp / host, host, executor=self.executor).start()
        self.agents[host] = agent
        return agent

    def cli(self, *args: str, check: bool = True) -> Any:
        """Run the real `treeherd` command against this cluster: its stdout (checked), or the result."""
        result = subprocess.run(
            [*treeherd_command(), "--manager", self.url, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stderr
            return result.stdout
        return result

    def client(self) -> Client:
        return Client(self.url, timeout=10)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        with self.client() as client:
            return client.get(f"/api/v1/services/{service}/tasks", list)

    def nodes(self) -> dict[str, str]:
        with self.client() as client:
            return {
                m["hostname"]: m["agent"]["state"] for m in client.get("/api/v1/machines", list, agents=True)
            }

    def running(self, service: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(service) if t["desired_state"] == "running" and t["state"] == "running"]

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        self.manager.kill()
