"""A root rotation's bridge: the new root cross-signed by the old one, over real TLS connections."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime

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
OLD = ClusterCA.create("c1", NOW)
NEW = ClusterCA.create("c1", NOW)
BRIDGE = OLD.cross_sign(NEW.cert_pem, NOW)


def pair(ca: ClusterCA, node_id: str, chain: bytes = b"", addresses: tuple[str, ...] = ()) -> KeyPair:
    key = new_private_key()
    cert = ca.issue(
        make_csr(key), node_id=node_id, role="worker", cluster_id="c1", now=NOW, addresses=addresses
    )
    return KeyPair(cert_pem=cert + chain, key_pem=key_pem(key))


def test_a_new_root_certificate_with_the_bridge_verifies_against_the_old_root_alone() -> None:
    bridged = pair(NEW, "node-a", BRIDGE)
    assert identity_of(bridged.cert_pem).node_id == "node-a"
    assert verify_issued(bridged.cert_pem, OLD.cert_pem, NOW).node_id == "node-a"
    assert verify_issued(bridged.cert_pem, NEW.cert_pem + OLD.cert_pem, NOW).node_id == "node-a"
    with pytest.raises(CertificateError, match="not issued by this cluster's CA"):
        verify_issued(pair(NEW, "node-a").cert_pem, OLD.cert_pem, NOW)  # no bridge, no trust


def test_a_bridge_signed_by_another_root_does_not_help() -> None:
    stranger = ClusterCA.create("c2", NOW)
    forged = pair(NEW, "node-a", stranger.cross_sign(NEW.cert_pem, NOW))
    with pytest.raises(CertificateError):
        verify_issued(forged.cert_pem, OLD.cert_pem, NOW)


@pytest.fixture
async def old_root_server() -> AsyncIterator[int]:
    """A TLS echo of the client's node id trusting only the old root, its own certificate from the new one."""
    server_pair = pair(NEW, "manager-1", BRIDGE, addresses=("127.0.0.1",))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        writer.write(identity_of_der(sslobj.getpeercert(binary_form=True)).node_id.encode())
        await writer.drain()
        writer.close()

    context = server_context(OLD.cert_pem, server_pair, require_client_cert=True)
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def ask(port: int, context: ssl.SSLContext) -> bytes:
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            return await reader.read()
        finally:
            writer.close()


async def test_nodes_trusting_either_root_talk_during_the_rotation(old_root_server: int) -> None:
    # A node not yet renewed (old certificate, old root only) and one renewed (new certificate with
    # the bridge, both roots) both reach a server that has the new certificate and trusts the old root.
    assert await ask(old_root_server, client_context(OLD.cert_pem, pair(OLD, "node-old"))) == b"node-old"
    renewed = client_context(NEW.cert_pem + OLD.cert_pem, pair(NEW, "node-new", BRIDGE))
    assert await ask(old_root_server, renewed) == b"node-new"


async def answered(port: int, context: ssl.SSLContext) -> None:
    # TLS 1.3 reports the server's refusal at the first read, as an error or an empty answer.
    if not await ask(port, context):
        raise ConnectionError("the server closed the connection without an answer")


async def test_without_the_bridge_a_new_root_certificate_is_refused(old_root_server: int) -> None:
    context = client_context(NEW.cert_pem + OLD.cert_pem, pair(NEW, "node-x"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await answered(old_root_server, context)
