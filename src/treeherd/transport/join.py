"""A node joins the cluster: pin the CA by the join token's digest, send a signing request, keep the
certificate; and the TLS context it then connects with (its certificate, the cluster CA only).

The CA's certificate is first read without trusting anything: it is trusted only if its SHA-256
equals the digest in the token the operator gave (no trust on first use). The key never leaves the
node; its files are 0600 in DATA_DIR/secrets.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from datetime import datetime
from pathlib import Path

import msgspec

from treeherd.core.security.join_tokens import DIGEST_CHARS, JoinToken, base36, parse_join_token
from treeherd.model.security import JoinAnswer, JoinRequest
from treeherd.transport.client import Client, ClientError, manager_urls
from treeherd.transport.pki import (
    CertificateError,
    KeyPair,
    cert_sha256,
    client_context,
    key_pem,
    make_csr,
    new_private_key,
    verify_issued,
)
from treeherd.transport.secret_files import read_secret, write_secret

TIMEOUT_S = 15.0


class JoinError(Exception):
    """The node could not join; the message says why and what to do."""


def identity_files(data_dir: Path) -> tuple[Path, Path, Path]:
    directory = data_dir / "secrets"
    return directory / "node.crt", directory / "node.key", directory / "ca.crt"


def _fetch_ca(manager_url: str) -> bytes:
    parts = urllib.parse.urlsplit(manager_url)
    if parts.scheme == "https":
        # Nothing is trusted yet: the answer is checked against the token's digest below.
        unverified = ssl._create_unverified_context()
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, timeout=TIMEOUT_S, context=unverified
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=TIMEOUT_S)
    try:
        connection.request("GET", parts.path.rstrip("/") + "/api/v1/cluster/ca")
        response = connection.getresponse()
        body = response.read()
    except OSError as error:
        raise _Unreachable(f"{manager_url}: {error}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise JoinError(
            f"the manager at {manager_url} did not give its CA certificate (HTTP {response.status})"
        )
    return msgspec.json.decode(body, type=str).encode() if body.startswith(b'"') else body


def join(manager_url: str, data_dir: Path, token_text: str, now: datetime) -> KeyPair:
    """Join the cluster of the manager(s) at `manager_url` (URLs separated by commas: each is tried in
    turn while it cannot be reached) with a join token; keep and return the node's certificate and key."""
    try:
        token = parse_join_token(token_text)
        urls = manager_urls(manager_url)
    except Exception as error:
        raise JoinError(str(error)) from None
    unreachable: list[str] = []
    for url in urls:
        try:
            return _join_through(url, data_dir, token, now)
        except _Unreachable as error:
            unreachable.append(str(error))
    raise JoinError("cannot reach a manager to join: " + "; ".join(unreachable))


class _Unreachable(Exception):
    """This manager could not be reached: the next one is tried."""


def _join_through(manager_url: str, data_dir: Path, token: JoinToken, now: datetime) -> KeyPair:
    ca_pem = _fetch_ca(manager_url)
    try:
        digest = base36(cert_sha256(ca_pem), DIGEST_CHARS)
    except CertificateError as error:
        raise JoinError(f"the manager at {manager_url} sent no usable CA certificate: {error}") from None
    if digest != token.ca_digest:
        raise JoinError(
            f"the CA of the manager at {manager_url} is not the one the join token names: a wrong manager, or"
            " something between this node and it; check the URL and the token"
        )
    key = new_private_key()
    request = JoinRequest(join_token=str(token), csr_pem=make_csr(key).decode())
    context = client_context(ca_pem) if manager_url.startswith("https://") else None
    try:
        with Client(manager_url, timeout=TIMEOUT_S, token="", tls=context) as client:
            answer = client.request("POST", "/api/v1/join", request, type=JoinAnswer)
    except ClientError as error:
        if error.status is None or error.status == 503:
            raise _Unreachable(f"{manager_url}: {error}") from None
        raise JoinError(f"the manager refused the join: {error}") from None
    pair = KeyPair(cert_pem=answer.cert_pem.encode(), key_pem=key_pem(key))
    try:
        verify_issued(pair.cert_pem, ca_pem, now)
    except CertificateError as error:
        raise JoinError(f"the manager answered a certificate this node cannot use: {error}") from None
    cert_path, key_path, ca_path = identity_files(data_dir)
    write_secret(key_path, pair.key_pem)
    write_secret(cert_path, pair.cert_pem)
    write_secret(ca_path, ca_pem)
    return pair


def node_tls(data_dir: Path) -> ssl.SSLContext | None:
    """The TLS context of a node that has joined (its certificate, trusting only the cluster CA), or
    None if it has not."""
    cert_path, key_path, ca_path = identity_files(data_dir)
    if not cert_path.exists():
        return None
    pair = KeyPair(cert_pem=read_secret(cert_path), key_pem=read_secret(key_path))
    return client_context(read_secret(ca_path), pair)
