"""A root CA rotation end to end over real TLS: three joined agents with running tasks are re-issued
on their open sessions, no task restarts, and the old root's certificates are refused afterwards."""

from __future__ import annotations

import json
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.test_auth import as_admin, keep_token, wait_for
from treeherd.testing.processes import AgentProcess, ManagerProcess, processes_under, reap_processes_under
from treeherd.transport.pki import CertificateError, verify_issued
from treeherd.transport.secret_files import write_secret

pytestmark = pytest.mark.e2e

HOSTS = ("host-a", "host-b", "host-c")


def task_pids(tmp_path: Path) -> set[int]:
    """The task processes of the three agents (each runs in its task directory under the agent's)."""
    return {process.pid for host in HOSTS for process in processes_under(tmp_path / host)}


def first_cert(bundle: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    return bundle[: bundle.index(end) + len(end)] + b"\n"


def test_three_agents_are_reissued_under_a_new_root_without_losing_sessions_or_tasks(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "manager", extra_args=("--tls", "--require-auth")) as manager:
        admin_cli = as_admin(manager, tmp_path / "manager")
        admin_cli("cluster", "set", "--heartbeat-period", "1s")
        join_token = keep_token(admin_cli("cluster", "join-token", "worker", "-q"), tmp_path / "join.token")
        old_root = (tmp_path / "manager" / "ca.crt").read_bytes()
        agents = [
            AgentProcess(
                manager.url,
                tmp_path / host,
                host,
                executor="process",
                extra_args=("--join-token-file", str(join_token)),
            )
            for host in HOSTS
        ]
        try:
            for agent in agents:
                agent.start()
            assert wait_for(lambda: admin_cli("node", "ls").count("ready") == 3), admin_cli("node", "ls")
            admin_cli("tree", "add", "corp")
            for host in HOSTS:
                admin_cli("machine", "bind", host, "corp")
            admin_cli("service", "create", "web", "--node", "corp", "--replicas", "3", "--", "sleep", "1000")

            def running() -> list[str]:
                tasks = json.loads(admin_cli("service", "ps", "web", "--format", "json"))
                return sorted(t["id"] for t in tasks if t["state"] == "running")

            assert wait_for(lambda: len(running()) == 3, seconds=30), admin_cli("service", "ps", "web")
            before = running()
            pids_before = task_pids(tmp_path)
            assert len(pids_before) >= 3, pids_before
            shutil.copytree(tmp_path / "host-a" / "secrets", tmp_path / "old-a" / "secrets")

            started = json.loads(admin_cli("cluster", "ca", "--rotate", "--format", "json"))
            assert started["rotating"]

            def finished() -> bool:
                return not json.loads(admin_cli("cluster", "ca", "--format", "json"))["rotating"]

            assert wait_for(finished, seconds=60), admin_cli("cluster", "ca") + manager.log()
            new_root = (tmp_path / "manager" / "ca.crt").read_bytes()
            assert new_root != old_root and new_root.count(b"BEGIN CERTIFICATE") == 1
            now = datetime.now(UTC)
            for agent, host in zip(agents, HOSTS, strict=True):
                cert = (tmp_path / host / "secrets" / "node.crt").read_bytes()
                verify_issued(cert, new_root, now)
                with pytest.raises(CertificateError):
                    verify_issued(first_cert(cert), old_root, now)
                assert agent.log().count(" started (machine") == 1, agent.log()  # one session all along
            assert running() == before  # the same tasks, never restarted
            assert task_pids(tmp_path) == pids_before  # the same processes
            assert "ready" in admin_cli("node", "ls")
        finally:
            for agent in agents:
                agent.stop()
            for host in HOSTS:
                reap_processes_under(tmp_path / host)
        # host-a's old certificate, from the retired root, opens no session (even trusting the new root).
        write_secret(tmp_path / "old-a" / "secrets" / "ca.crt", new_root)
        thief = AgentProcess(manager.url, tmp_path / "old-a", "host-a")
        try:
            thief.start()
            assert wait_for(lambda: "refused the agent channel" in thief.log(), seconds=20), thief.log()
            assert " started (machine" not in thief.log()
        finally:
            thief.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_manager_restarted_mid_rotation_finishes_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "manager"
    listen = f"127.0.0.1:{free_port()}"
    args = ("--tls", "--require-auth")
    manager = ManagerProcess(data_dir, listen=listen, extra_args=args).start()
    agent: AgentProcess | None = None
    try:
        admin_cli = as_admin(manager, data_dir)
        admin_cli("cluster", "set", "--heartbeat-period", "1s")
        join_token = keep_token(admin_cli("cluster", "join-token", "worker", "-q"), tmp_path / "join.token")
        agent = AgentProcess(
            manager.url, tmp_path / "a", "host-a", extra_args=("--join-token-file", str(join_token))
        )
        agent.start()
        assert wait_for(lambda: "ready" in admin_cli("node", "ls")), agent.log()
        agent.stop()  # away while the rotation starts: it stays pending
        status = json.loads(admin_cli("cluster", "ca", "--rotate", "--format", "json"))
        assert status["rotating"] and len(status["pending"]) == 1, status
        manager.stop()
        manager = ManagerProcess(data_dir, listen=listen, extra_args=args).start()
        admin_cli = as_admin(manager, data_dir)
        status = json.loads(admin_cli("cluster", "ca", "--format", "json"))
        assert status["rotating"] and len(status["pending"]) == 1, status
        assert "pending: " in admin_cli("cluster", "ca")
        # The agent comes back with its old certificate and old root, and is re-issued on its session.
        agent.start()

        def finished() -> bool:
            return not json.loads(admin_cli("cluster", "ca", "--format", "json"))["rotating"]

        assert wait_for(finished, seconds=60), agent.log() + manager.log()
        new_root = (data_dir / "ca.crt").read_bytes()
        assert new_root.count(b"BEGIN CERTIFICATE") == 1
        verify_issued((tmp_path / "a" / "secrets" / "node.crt").read_bytes(), new_root, datetime.now(UTC))
        assert "root CA rotation finished: all 1 node(s) renewed" in manager.log()
    finally:
        if agent is not None:
            agent.stop()
        manager.stop()
