"""Joining: the cluster CA in a data directory, join tokens per role, and certificates for joining nodes."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from treeherd.api.app import create_app
from treeherd.core.security.join_tokens import make_join_token, parse_join_token
from treeherd.manager.cluster_ca import CaError, ClusterAuthority
from treeherd.manager.inventory import Inventory
from treeherd.model.security import JoinedKey
from treeherd.testing.factories import FIXED_NOW
from treeherd.transport.pki import ClusterCA, identity_of, key_pem, make_csr, new_private_key, verify_issued

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture
def authority(tmp_path: Path) -> ClusterAuthority:
    return ClusterAuthority.open(tmp_path / "data", FIXED_NOW)


@pytest.fixture
async def joining(inventory: Inventory, authority: ClusterAuthority) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(inventory, authority=authority)) as client:
        yield client


def csr() -> str:
    return make_csr(new_private_key()).decode()


def test_the_ca_and_join_secrets_are_made_once_and_kept_private(tmp_path: Path) -> None:
    first = ClusterAuthority.open(tmp_path / "data", FIXED_NOW)
    again = ClusterAuthority.open(tmp_path / "data", FIXED_NOW)
    assert again.ca.cert_pem == first.ca.cert_pem and again.tokens() == first.tokens()
    secrets_dir = tmp_path / "data" / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in secrets_dir.iterdir()} == {
        "ca.key": 0o600,
        "join-worker.secret": 0o600,
        "join-manager.secret": 0o600,
    }
    assert (tmp_path / "data" / "ca.crt").read_bytes() == first.ca.cert_pem
    token = parse_join_token(first.tokens().worker)
    assert token == make_join_token(
        first.ca.digest, bytes.fromhex((secrets_dir / "join-worker.secret").read_text())
    )


def test_an_external_ca_is_adopted_at_the_first_start_only(tmp_path: Path) -> None:
    external = ClusterCA.create("corp", FIXED_NOW)
    (tmp_path / "ca.pem").write_bytes(external.cert_pem)
    (tmp_path / "ca.key").write_bytes(external.key_pem)
    adopted = ClusterAuthority.open(
        tmp_path / "data", FIXED_NOW, external=(tmp_path / "ca.pem", tmp_path / "ca.key")
    )
    assert adopted.ca.cert_pem == external.cert_pem
    other = ClusterCA.create("other", FIXED_NOW)
    (tmp_path / "other.pem").write_bytes(other.cert_pem)
    with pytest.raises(CaError, match="already has a cluster CA"):
        ClusterAuthority.open(
            tmp_path / "data", FIXED_NOW, external=(tmp_path / "other.pem", tmp_path / "ca.key")
        )
    with pytest.raises(CaError, match="does not belong"):
        ClusterAuthority.open(
            tmp_path / "fresh", FIXED_NOW, external=(tmp_path / "other.pem", tmp_path / "ca.key")
        )


async def test_a_node_joins_with_its_roles_token_and_gets_a_certificate_of_the_ca(
    joining: Client, authority: ClusterAuthority
) -> None:
    ca_pem = (await joining.get("/api/v1/cluster/ca")).text
    assert ca_pem.encode() == authority.ca.cert_pem
    tokens = (await joining.get("/api/v1/cluster/join-tokens")).json()
    for role in ("worker", "manager"):
        answer = await joining.post("/api/v1/join", json={"join_token": tokens[role], "csr_pem": csr()})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        identity = verify_issued(body["cert_pem"].encode(), ca_pem.encode(), FIXED_NOW)
        assert (identity.role, identity.node_id, body["role"]) == (role, body["node_id"], role)
        assert identity.cluster_id == authority.ca.cluster_id


async def test_a_wrong_or_rotated_token_admits_no_one(joining: Client, authority: ClusterAuthority) -> None:
    old = authority.tokens().worker
    foreign = str(make_join_token(ClusterCA.create("x", FIXED_NOW).digest, bytes(16)))
    rotated = (await joining.post("/api/v1/cluster/join-tokens/worker/rotate")).json()
    assert rotated["worker"] != old and rotated["manager"] == authority.tokens().manager
    for token in (old, foreign):
        refused = await joining.post("/api/v1/join", json={"join_token": token, "csr_pem": csr()})
        assert refused.status_code == 401
        assert (
            refused.json()["detail"] == "the join token was refused: ask an administrator for a current one"
        )
    admitted = await joining.post("/api/v1/join", json={"join_token": rotated["worker"], "csr_pem": csr()})
    assert admitted.status_code == 201


async def test_a_replayed_join_is_refused_and_recorded(
    joining: Client, authority: ClusterAuthority, inventory: Inventory
) -> None:
    request = {"join_token": authority.tokens().worker, "csr_pem": csr()}
    first = await joining.post("/api/v1/join", json=request)
    assert first.status_code == 201, first.text
    for replay in (request, {"join_token": authority.tokens().manager, "csr_pem": request["csr_pem"]}):
        again = await joining.post("/api/v1/join", json=replay)
        assert again.status_code == 401, again.text
        assert again.json()["detail"] == (
            "the join was refused: a node joins once, with a key of its own and a current token"
        )
    (joined,) = inventory.view.all(JoinedKey)
    assert joined.node_id == first.json()["node_id"]
    assert len(list(inventory.view.all(JoinedKey))) == 1  # nothing recorded for the refused ones


async def test_a_malformed_token_or_request_says_what_is_wrong(
    joining: Client, authority: ClusterAuthority
) -> None:
    malformed = await joining.post("/api/v1/join", json={"join_token": "SWMTKN-1-abc", "csr_pem": csr()})
    assert malformed.status_code == 400 and malformed.json()["field"] == "join_token"
    bad_csr = await joining.post(
        "/api/v1/join", json={"join_token": authority.tokens().worker, "csr_pem": "x"}
    )
    assert bad_csr.status_code == 400 and bad_csr.json()["field"] == "csr_pem"


async def test_join_tokens_are_for_administrators_when_authentication_is_required(
    inventory: Inventory, authority: ClusterAuthority
) -> None:
    async with AsyncTestClient(app=create_app(inventory, authority=authority, require_auth=True)) as client:
        assert (await client.get("/api/v1/cluster/join-tokens")).status_code == 401
        assert (await client.get("/api/v1/cluster/ca")).status_code == 200
        joined = await client.post(
            "/api/v1/join", json={"join_token": authority.tokens().worker, "csr_pem": csr()}
        )
        assert joined.status_code == 201
        assert identity_of(joined.json()["cert_pem"].encode()).role == "worker"


def test_the_key_never_leaves_the_secrets_directory(authority: ClusterAuthority, tmp_path: Path) -> None:
    key = key_pem(new_private_key())
    assert key not in (tmp_path / "data" / "ca.crt").read_bytes()
    assert b"PRIVATE KEY" not in (tmp_path / "data" / "ca.crt").read_bytes()
