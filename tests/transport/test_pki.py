"""The cluster CA and node certificates, over real TLS connections on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from treeherd.transport.pki import (
    CertificateError,
    ClusterCA,
    KeyPair,
    client_context,
    identity_of,
    identity_of_der,
    key_pem,
    make_csr,
    new_private_key,
    server_context,
    verify_issued,
)

NOW = datetime.now(UTC)


def node_pair(ca: ClusterCA, node_id: str, role: str = "worker", **issue: object) -> KeyPair:
    key = new_private_key()
    cert = ca.issue(
        make_csr(key, "a name the CA ignores"),
        node_id=node_id,
        role=role,
        cluster_id="c1",
        now=issue.pop("now", NOW),  # type: ignore[arg-type]
        **issue,  # type: ignore[arg-type]
    )
    return KeyPair(cert_pem=cert, key_pem=key_pem(key))


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("c1", NOW)


def test_the_ca_writes_the_subject_not_the_request(ca: ClusterCA) -> None:
    pair = node_pair(ca, "node-7", "manager")
    identity = identity_of(pair.cert_pem)
    assert (identity.node_id, identity.role, identity.cluster_id) == ("node-7", "manager", "c1")
    assert identity.not_after - identity.not_before == timedelta(days=90, minutes=5)
    assert verify_issued(pair.cert_pem, ca.cert_pem, NOW).node_id == "node-7"


def test_a_certificate_of_another_ca_is_not_verified(ca: ClusterCA) -> None:
    stranger = node_pair(ClusterCA.create("c2", NOW), "node-7")
    with pytest.raises(CertificateError, match="not issued by this cluster's CA"):
        verify_issued(stranger.cert_pem, ca.cert_pem, NOW)


def test_an_expired_certificate_is_not_verified(ca: ClusterCA) -> None:
    old = node_pair(ca, "node-7", now=NOW - timedelta(days=2), lifetime=timedelta(days=1))
    with pytest.raises(CertificateError, match="not valid now"):
        verify_issued(old.cert_pem, ca.cert_pem, NOW)


def test_the_ca_reloads_from_its_pem_and_refuses_a_mismatched_key(ca: ClusterCA) -> None:
    again = ClusterCA(ca.cert_pem, ca.key_pem)
    assert again.digest == ca.digest
    with pytest.raises(CertificateError, match="does not belong"):
        ClusterCA(ca.cert_pem, ClusterCA.create("c2", NOW).key_pem)
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ClusterCA(b"garbage", ca.key_pem)


def test_a_request_with_a_bad_signature_or_another_key_type_is_refused(ca: ClusterCA) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    csr = make_csr(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(CertificateError, match="P-256"):
        ca.issue(csr, node_id="n", role="worker", cluster_id="c1", now=NOW)
    with pytest.raises(CertificateError, match="signing request"):
        ca.issue(b"not a request", node_id="n", role="worker", cluster_id="c1", now=NOW)


@pytest.fixture
async def mtls_server(ca: ClusterCA) -> AsyncIterator[tuple[int, list[str]]]:
    """A TLS echo of the client's node id, client certificates required."""
    seen: list[str] = []
    server_pair = node_pair(ca, "manager-1", "manager", addresses=("127.0.0.1",))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        identity = identity_of_der(sslobj.getpeercert(binary_form=True))
        seen.append(identity.node_id)
        writer.write(identity.node_id.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        answer, "127.0.0.1", 0, ssl=server_context(ca.cert_pem, server_pair, require_client_cert=True)
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, seen


async def ask(port: int, context: ssl.SSLContext) -> bytes:
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            return await reader.read()
        finally:
            writer.close()


async def ask_expecting_an_answer(port: int, context: ssl.SSLContext) -> None:
    # TLS 1.3 reports the server's refusal at the first read, as an error or an empty answer.
    if not await ask(port, context):
        raise ConnectionError("the server closed the connection without an answer")


async def test_a_node_certificate_opens_a_mutual_tls_connection_naming_its_node(
    ca: ClusterCA, mtls_server: tuple[int, list[str]]
) -> None:
    port, seen = mtls_server
    assert await ask(port, client_context(ca.cert_pem, node_pair(ca, "node-a"))) == b"node-a"
    assert seen == ["node-a"]


async def test_a_client_without_a_certificate_or_from_another_ca_is_refused(
    ca: ClusterCA, mtls_server: tuple[int, list[str]]
) -> None:
    port, seen = mtls_server
    stranger = node_pair(ClusterCA.create("c2", NOW), "node-a")
    for context in (client_context(ca.cert_pem), client_context(ca.cert_pem, stranger)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await ask_expecting_an_answer(port, context)
    assert seen == []


async def test_a_client_checks_the_manager_against_the_pinned_ca(
    ca: ClusterCA, mtls_server: tuple[int, list[str]]
) -> None:
    port, _ = mtls_server
    other = ClusterCA.create("c2", NOW)
    with pytest.raises(ssl.SSLCertVerificationError):
        await ask(port, client_context(other.cert_pem, node_pair(other, "node-a")))
