"""User certificates for the API over real TLS: issued by `treeherd cert create`, presented by the CLI
with TREEHERD_CERT_FILE/TREEHERD_KEY_FILE, and the caller authenticated with the certificate's role."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_auth import as_admin, wait_for
from treeherd.testing.processes import ManagerProcess, treeherd_command
from treeherd.transport.pki import ClusterCA, identity_of, key_pem, make_csr, new_private_key
from treeherd.transport.secret_files import write_secret

pytestmark = pytest.mark.e2e


def with_cert(url: str, ca: Path, cert: Path, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREEHERD_")}
    env |= {"TREEHERD_CA_FILE": str(ca), "TREEHERD_CERT_FILE": str(cert), "TREEHERD_KEY_FILE": str(key)}
    return subprocess.run(
        [*treeherd_command(), "--manager", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def _tls_reasons(events: list[dict[str, Any]]) -> set[str]:
    return {
        refusal["reason"]
        for event in events
        for refusal in event["object"]["recent"]
        if refusal["what"] == "TLS handshake" and refusal["address"] == "127.0.0.1"
    }


def cli_events(admin_cli: Callable[..., str], since: int) -> dict[str, Any] | None:
    """The next audit event after `since`, or None when none comes within a few seconds."""
    try:
        text = admin_cli(
            "events", "--since", str(since), "--kind", "audit", "--count", "1", "--format", "json"
        )
    except subprocess.TimeoutExpired:
        return None
    event: dict[str, Any] = json.loads(text)
    return event


def test_a_user_certificate_authenticates_api_requests_with_its_role(tmp_path: Path) -> None:
    data_dir = tmp_path / "manager"
    with ManagerProcess(data_dir, extra_args=("--tls", "--require-auth")) as manager:
        admin_cli = as_admin(manager, data_dir)
        admin_cli("tree", "add", "corp")
        out = tmp_path / "certs"
        admin_cli("cert", "create", "alice", "--role", "viewer", "--out", str(out))
        cert, key, ca = out / "alice.crt", out / "alice.key", out / "ca.crt"
        assert identity_of(cert.read_bytes()).role == "viewer"
        assert identity_of(cert.read_bytes()).node_id == "user:alice"
        assert oct(key.stat().st_mode & 0o777) == "0o600"

        reads = with_cert(manager.url, ca, cert, key, "tree", "ls")
        assert reads.returncode == 0 and "corp" in reads.stdout, reads.stderr  # no token: the certificate
        writes = with_cert(manager.url, ca, cert, key, "tree", "add", "other")
        assert writes.returncode != 0 and "the role viewer may not" in writes.stderr, writes.stderr

        # A certificate from another CA, or an expired one of this CA, is refused without detail.
        stranger = ClusterCA.create("elsewhere", datetime.now(UTC))
        own = ClusterCA((data_dir / "ca.crt").read_bytes(), (data_dir / "secrets" / "ca.key").read_bytes())
        private = new_private_key()
        for name, issuer, now in (
            ("stranger", stranger, datetime.now(UTC)),
            ("expired", own, datetime.now(UTC) - timedelta(days=2)),
        ):
            pem = issuer.issue(
                make_csr(private),
                node_id="user:mallory",
                role="admin",
                cluster_id="c",
                now=now,
                lifetime=timedelta(days=1),
            )
            write_secret(tmp_path / f"{name}.crt", pem)
            write_secret(tmp_path / f"{name}.key", key_pem(private))
            refused = with_cert(
                manager.url, ca, tmp_path / f"{name}.crt", tmp_path / f"{name}.key", "tree", "ls"
            )
            assert refused.returncode != 0, (name, refused.stdout)
            assert "Traceback" not in refused.stderr and "corp" not in refused.stdout
        # Both were refused during the TLS handshake itself, before any HTTP: each is an audit event.
        reasons = {
            f"client certificate refused: {why}"
            for why in ("unable to get local issuer certificate", "certificate has expired")
        }

        def handshake_refusals() -> set[str]:
            event = json.loads(
                admin_cli("events", "--since", "0", "--kind", "audit", "--count", "1", "--format", "json")
            )
            since, seen = event["revision"], [event]
            while len(seen) < 10 and not reasons <= _tls_reasons(seen):
                more = cli_events(admin_cli, since)
                if more is None:
                    break
                seen.append(more)
                since = more["revision"]
            return _tls_reasons(seen)

        assert wait_for(lambda: reasons <= handshake_refusals(), 15), handshake_refusals()
        assert "client certificate refused: certificate has expired" in manager.log()

        # A viewer's certificate cannot ask for an admin's.
        asked = with_cert(
            manager.url, ca, cert, key, "cert", "create", "bob", "--role", "admin", "--out", str(out)
        )
        assert asked.returncode != 0 and "the role viewer may not" in asked.stderr, asked.stderr
        assert not (out / "bob.crt").exists()

        # Revoked by name: alice's certificate is refused from the next request on, and on record as such.
        listed = json.loads(admin_cli("cert", "ls", "--format", "json"))
        assert [(c["name"], c["role"], c["revoked_at"]) for c in listed] == [("alice", "viewer", None)]
        admin_cli("cert", "rm", "alice")
        revoked = with_cert(manager.url, ca, cert, key, "tree", "ls")
        assert revoked.returncode != 0 and "corp" not in revoked.stdout, revoked.stdout
        assert "authentication required" in revoked.stderr or "not valid" in revoked.stderr, revoked.stderr
        assert json.loads(admin_cli("cert", "ls", "--format", "json"))[0]["revoked_at"] is not None
        assert wait_for(lambda: "the certificate of user alice was revoked" in manager.log())
        # A new certificate for alice works; one this CA signed that was never issued does not.
        again = tmp_path / "again"
        admin_cli("cert", "create", "alice", "--role", "viewer", "--out", str(again))
        renewed = with_cert(manager.url, ca, again / "alice.crt", again / "alice.key", "tree", "ls")
        assert renewed.returncode == 0 and "corp" in renewed.stdout, renewed.stderr
        forged = own.issue(
            make_csr(private),
            node_id="user:mallory",
            role="admin",
            cluster_id="c",
            now=datetime.now(UTC),
            lifetime=timedelta(days=1),
        )
        write_secret(tmp_path / "forged.crt", forged)
        unknown = with_cert(manager.url, ca, tmp_path / "forged.crt", tmp_path / "expired.key", "tree", "ls")
        assert unknown.returncode != 0 and "corp" not in unknown.stdout
        assert wait_for(lambda: "a user certificate this cluster has no record of" in manager.log())
        rm_again = subprocess.run(
            [*treeherd_command(), "--manager", manager.url, "cert", "rm", "nobody"],
            capture_output=True,
            text=True,
            timeout=30,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("TREEHERD_")},
                "TREEHERD_CA_FILE": str(data_dir / "ca.crt"),
                "TREEHERD_TOKEN_FILE": str(data_dir / "secrets" / "admin.token"),
            },
            check=False,
        )
        assert rm_again.returncode != 0 and "no valid certificate" in rm_again.stderr, rm_again.stderr
