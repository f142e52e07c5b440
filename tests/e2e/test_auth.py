"""A manager that requires authentication, end to end: its first admin token on disk, the real CLI with
and without tokens, roles refused with clear words, an agent admitted by an agent token only."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from treeherd.testing.processes import AgentProcess, ManagerProcess, treeherd_command

pytestmark = pytest.mark.e2e


def cli(
    url: str, *args: str, token_file: Path | None = None, ca_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREEHERD_TOKEN", "TREEHERD_CA"))}
    if token_file is not None:
        env["TREEHERD_TOKEN_FILE"] = str(token_file)
    if ca_file is not None:
        env["TREEHERD_CA_FILE"] = str(ca_file)
    return subprocess.run(
        [*treeherd_command(), "--manager", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def as_admin(manager: ManagerProcess, data_dir: Path) -> Callable[..., str]:
    """The real CLI with the manager's first admin token and its CA: its stdout, the command checked."""

    def run(*args: str) -> str:
        done = cli(
            manager.url, *args, token_file=data_dir / "secrets" / "admin.token", ca_file=data_dir / "ca.crt"
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def keep_token(text: str, path: Path) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_manager_requiring_auth_admits_by_token_and_role(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "manager", extra_args=("--require-auth",)) as manager:
        admin = tmp_path / "manager" / "secrets" / "admin.token"
        assert stat.S_IMODE(admin.stat().st_mode) == 0o600
        assert stat.S_IMODE(admin.parent.stat().st_mode) == 0o700
        assert admin.read_text().strip() not in manager.log()

        anonymous = cli(manager.url, "tree", "ls")
        assert anonymous.returncode != 0
        assert "authentication required" in anonymous.stderr and "TREEHERD_TOKEN_FILE" in anonymous.stderr
        assert "Traceback" not in anonymous.stderr

        assert cli(manager.url, "tree", "add", "corp", token_file=admin).returncode == 0
        made = cli(manager.url, "token", "create", "ci-viewer", "--role", "viewer", token_file=admin)
        assert made.returncode == 0, made.stderr
        viewer = keep_token(made.stdout, tmp_path / "viewer.token")
        assert "corp" in cli(manager.url, "tree", "ls", token_file=viewer).stdout
        refused = cli(manager.url, "tree", "add", "corp.web", token_file=viewer)
        assert refused.returncode != 0
        assert "the role viewer may not do this" in refused.stderr
        listed = cli(manager.url, "token", "ls", token_file=admin).stdout
        assert "ci-viewer" in listed and "viewer" in listed and made.stdout.strip() not in listed
        assert cli(manager.url, "token", "ls", token_file=viewer).returncode != 0

        viewer.chmod(0o644)
        loose = cli(manager.url, "tree", "ls", token_file=viewer)
        assert loose.returncode != 0 and "chmod 600" in loose.stderr
        viewer.chmod(0o600)

        assert cli(manager.url, "token", "rm", "ci-viewer", token_file=admin).returncode == 0
        assert cli(manager.url, "tree", "ls", token_file=viewer).returncode != 0
        assert "refused" in manager.log() or "no valid credential" in manager.log()


def test_an_agent_joins_only_with_an_agent_token(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "manager", extra_args=("--require-auth",)) as manager:
        admin = tmp_path / "manager" / "secrets" / "admin.token"
        operator = keep_token(
            cli(manager.url, "token", "create", "ops", "--role", "operator", token_file=admin).stdout,
            tmp_path / "ops.token",
        )
        agent_token = keep_token(
            cli(manager.url, "token", "create", "host-a", "--role", "agent", token_file=admin).stdout,
            tmp_path / "agent.token",
        )
        wrong = AgentProcess(
            manager.url, tmp_path / "wrong", "host-w", env={"TREEHERD_TOKEN_FILE": str(operator)}
        )
        right = AgentProcess(
            manager.url, tmp_path / "right", "host-a", env={"TREEHERD_TOKEN_FILE": str(agent_token)}
        )
        try:
            wrong.start()
            right.start()
            deadline = time.monotonic() + 20
            nodes = ""
            while time.monotonic() < deadline:
                nodes = cli(manager.url, "node", "ls", token_file=admin).stdout
                if "host-a" in nodes and "refused this agent's credential" in wrong.log():
                    break
                time.sleep(0.2)
            assert "host-a" in nodes, right.log()
            assert "host-w" not in nodes
            assert "refused this agent's credential (HTTP 403)" in wrong.log()
            assert (
                agent_token.read_text().strip() not in Path(f"/proc/{right.process.pid}/cmdline").read_text()
            )  # type: ignore[union-attr]
        finally:
            wrong.stop()
            right.stop()


def test_join_tokens_from_the_cli_pin_the_managers_ca(tmp_path: Path) -> None:
    from treeherd.core.security.join_tokens import DIGEST_CHARS, base36
    from treeherd.transport.pki import cert_sha256

    with ManagerProcess(tmp_path / "manager", extra_args=("--require-auth",)) as manager:
        admin = tmp_path / "manager" / "secrets" / "admin.token"
        shown = cli(manager.url, "cluster", "join-token", "worker", "-q", token_file=admin)
        assert shown.returncode == 0, shown.stderr
        token = shown.stdout.strip()
        ca = (tmp_path / "manager" / "ca.crt").read_bytes()
        assert token.split("-")[2] == base36(cert_sha256(ca), DIGEST_CHARS)
        rotated = cli(
            manager.url, "cluster", "join-token", "worker", "--rotate", "-q", token_file=admin
        ).stdout.strip()
        assert rotated != token and rotated.split("-")[2] == token.split("-")[2]
        assert cli(manager.url, "cluster", "join-token", "worker").returncode != 0  # no token: refused
        assert token not in manager.log() and rotated not in manager.log()
    # A restart keeps the CA and the current tokens.
    with ManagerProcess(tmp_path / "manager", extra_args=("--require-auth",)) as manager:
        again = cli(manager.url, "cluster", "join-token", "worker", "-q", token_file=admin).stdout.strip()
        assert again == rotated


def test_a_mismatched_external_ca_stops_the_manager_with_the_reason(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from treeherd.transport.pki import ClusterCA

    one, two = ClusterCA.create("one", datetime.now(UTC)), ClusterCA.create("two", datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(one.cert_pem)
    (tmp_path / "ca.key").write_bytes(two.key_pem)
    result = subprocess.run(
        [
            *treeherd_command(),
            "manager",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--external-ca-cert",
            str(tmp_path / "ca.pem"),
            "--external-ca-key",
            str(tmp_path / "ca.key"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "the CA key does not belong to the CA certificate" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tls_manager_serves_the_cli_the_enc_and_agents_that_trust_its_ca(tmp_path: Path) -> None:
    with ManagerProcess(tmp_path / "manager", extra_args=("--tls", "--require-auth")) as manager:
        assert manager.url.startswith("https://127.0.0.1:")
        admin = tmp_path / "manager" / "secrets" / "admin.token"
        ca = tmp_path / "manager" / "ca.crt"
        untrusted = cli(manager.url, "tree", "ls", token_file=admin)
        assert untrusted.returncode != 0
        assert "set TREEHERD_CA_FILE to its cluster CA certificate" in untrusted.stderr, untrusted.stderr
        assert "Traceback" not in untrusted.stderr

        admin_cli = as_admin(manager, tmp_path / "manager")

        admin_cli("tree", "add", "corp")
        admin_cli("machine", "add", "web-1")
        admin_cli("machine", "bind", "web-1", "corp")
        agent_token = keep_token(
            admin_cli("token", "create", "host-a", "--role", "agent"), tmp_path / "agent.token"
        )
        enc_token = keep_token(
            admin_cli("token", "create", "puppet", "--role", "enc"), tmp_path / "enc.token"
        )
        enc = cli(
            manager.url,
            "enc",
            "web-1",
            "--cache-dir",
            str(tmp_path / "cache"),
            token_file=enc_token,
            ca_file=ca,
        )
        assert enc.returncode == 0, enc.stderr
        assert "classes" in enc.stdout
        agent = AgentProcess(
            manager.url,
            tmp_path / "agent",
            "host-a",
            env={"TREEHERD_TOKEN_FILE": str(agent_token), "TREEHERD_CA_FILE": str(ca)},
        )
        try:
            agent.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "ready" not in admin_cli("node", "ls"):
                time.sleep(0.2)
            assert "host-a" in admin_cli("node", "ls"), agent.log()
            admin_cli("service", "create", "web", "--node", "corp", "--replicas", "2", "--", "sleep", "1000")

            def running() -> int:  # rows whose desired and current states are both running
                return len(re.findall(r"running\s+running", admin_cli("service", "ps", "web")))

            while time.monotonic() < deadline and running() < 2:
                time.sleep(0.2)
            assert running() == 2, agent.log()
        finally:
            agent.stop()


def wait_for(predicate: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_an_agent_joins_with_a_join_token_and_its_certificate_opens_only_its_own_session(
    tmp_path: Path,
) -> None:
    with ManagerProcess(tmp_path / "manager", extra_args=("--tls", "--require-auth")) as manager:
        admin_cli = as_admin(manager, tmp_path / "manager")

        join_token = keep_token(admin_cli("cluster", "join-token", "worker", "-q"), tmp_path / "join.token")
        first = AgentProcess(
            manager.url, tmp_path / "a", "host-a", extra_args=("--join-token-file", str(join_token))
        )
        try:
            first.start()
            assert wait_for(lambda: "host-a" in admin_cli("node", "ls")), first.log()
            assert "joined the cluster" in first.log()
            node_cert = tmp_path / "a" / "secrets" / "node.crt"
            assert stat.S_IMODE(node_cert.stat().st_mode) == 0o600
            machine = json.loads(admin_cli("machine", "show", "host-a", "--format", "json"))
            assert machine["node_identity"]
            # The same certificate claiming another hostname is refused.
            thief_dir = tmp_path / "b"
            shutil.copytree(tmp_path / "a" / "secrets", thief_dir / "secrets")
            thief = AgentProcess(manager.url, thief_dir, "host-b")
            try:
                thief.start()
                assert wait_for(lambda: "belongs to host-a" in thief.log()), thief.log()
                assert "host-b" not in admin_cli("node", "ls")
            finally:
                thief.stop()
            # node rm revokes the certificate: its sessions are refused from then on.
            admin_cli("node", "rm", "host-a", "--force")
            assert wait_for(lambda: "revoked when host-a was removed" in first.log()), first.log()
            assert "host-a" not in admin_cli("node", "ls")
        finally:
            first.stop()
        # A token for another CA, or a rotated one, does not join.
        admin_cli("cluster", "join-token", "worker", "--rotate")
        late = AgentProcess(
            manager.url, tmp_path / "c", "host-c", extra_args=("--join-token-file", str(join_token))
        )
        late.start()
        assert late.process is not None and late.process.wait(30) != 0
        assert "the manager refused the join" in late.log() and "Traceback" not in late.log()
        # Each refusal is an audit event: the stolen certificate's session first.
        first_audit = json.loads(
            admin_cli("events", "--since", "0", "--kind", "audit", "--count", "1", "--format", "json")
        )
        refusal = first_audit["object"]["recent"][0]
        assert refusal["what"] == "the agent session of host-b" and refusal["address"] == "127.0.0.1"
        assert "belongs to host-a" in refusal["reason"] and refusal["caller"] == machine["node_identity"]
        assert wait_for(lambda: "refused POST /api/v1/join from 127.0.0.1: unauthenticated" in manager.log())
        assert join_token.read_text().strip() not in manager.log()


def test_an_agent_renews_its_certificate_without_leaving_its_session(tmp_path: Path) -> None:
    with ManagerProcess(
        tmp_path / "manager", extra_args=("--tls", "--require-auth", "--cert-expiry", "6s")
    ) as manager:
        admin_cli = as_admin(manager, tmp_path / "manager")

        admin_cli("cluster", "set", "--heartbeat-period", "1s")
        join_token = keep_token(admin_cli("cluster", "join-token", "worker", "-q"), tmp_path / "join.token")
        agent = AgentProcess(
            manager.url, tmp_path / "a", "host-a", extra_args=("--join-token-file", str(join_token))
        )
        try:
            agent.start()
            node_cert = tmp_path / "a" / "secrets" / "node.crt"
            assert wait_for(lambda: "host-a" in admin_cli("node", "ls")), agent.log()
            first = node_cert.read_bytes()
            assert wait_for(lambda: agent.log().count("certificate renewed") >= 2, seconds=30), agent.log()
            assert node_cert.read_bytes() != first
            assert agent.log().count("session ") and agent.log().count(" started (machine") == 1, agent.log()
            assert "ready" in admin_cli("node", "ls")
            assert "renewed the certificate of host-a" in manager.log()
        finally:
            agent.stop()
