"""The manager's certificate authority on disk: the root, the join secrets, and the joins it signs.

At a manager's first start it makes the cluster's root CA (or adopts an external one given with
`--external-ca-cert/--external-ca-key`) and one join secret per role, all in DATA_DIR/secrets (0600
files in a 0700 directory); the root's certificate is also written, public, to DATA_DIR/ca.crt. A
join (`join`) checks the token against the secrets (core.security.join_tokens), then signs the node's
request with the subject the manager decides: a new node id and the token's role.

One manager holds these files; managers that share a store do not yet share the CA (issue 15).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from treeherd.core.security.join_tokens import SECRET_BYTES, make_join_token, parse_join_token, role_of_token
from treeherd.model.errors import InvalidInput
from treeherd.model.security import JoinAnswer, JoinRequest, JoinRole, JoinTokens
from treeherd.transport.pki import (
    DEFAULT_NODE_LIFETIME,
    CertificateError,
    ClusterCA,
    key_pem,
    make_csr,
    new_private_key,
)
from treeherd.transport.secret_files import ensure_private_dir, read_secret, write_secret

log = logging.getLogger(__name__)


class CaError(Exception):
    """The CA files cannot be used; the message says why and what to do."""


class ClusterAuthority:
    """The root CA and join secrets of a cluster, kept in a manager's data directory."""

    def __init__(self, ca: ClusterCA, secrets_by_role: dict[JoinRole, bytes], directory: Path) -> None:
        self.ca = ca
        self.node_lifetime = DEFAULT_NODE_LIFETIME  # of the certificates it issues (--cert-expiry)
        self._secrets = secrets_by_role
        self._directory = directory

    @classmethod
    def open(
        cls, data_dir: Path, now: datetime, *, external: tuple[Path, Path] | None = None
    ) -> ClusterAuthority:
        """Load the CA of `data_dir`, or make it (from `external`, a certificate and key, if given)."""
        directory = data_dir / "secrets"
        ensure_private_dir(directory)
        key_path, cert_path = directory / "ca.key", data_dir / "ca.crt"
        try:
            if key_path.exists():
                ca = ClusterCA(cert_path.read_bytes(), read_secret(key_path))
                if external is not None and external[0].read_bytes() != ca.cert_pem:
                    raise CaError(
                        f"{data_dir} already has a cluster CA that is not {external[0]}: a CA is chosen at the"
                        " first start only (use a new data directory to start over)"
                    )
            else:
                if external is not None:
                    ca = ClusterCA(external[0].read_bytes(), external[1].read_bytes())
                else:
                    ca = ClusterCA.create(f"treeherd-{secrets.token_hex(8)}", now)
                write_secret(key_path, ca.key_pem)
                cert_path.write_bytes(ca.cert_pem)
                log.info("the cluster CA's certificate is in %s", cert_path)
        except CertificateError as error:
            raise CaError(f"the cluster CA cannot be used: {error}") from None
        except OSError as error:
            raise CaError(f"cannot read or write the cluster CA in {data_dir}: {error}") from None
        authority = cls(ca, {}, directory)
        for role in JoinRole:
            authority._secrets[role] = authority._load_or_make_secret(role)
        return authority

    def _secret_path(self, role: JoinRole) -> Path:
        return self._directory / f"join-{role.value}.secret"

    def _load_or_make_secret(self, role: JoinRole) -> bytes:
        path = self._secret_path(role)
        if path.exists():
            return bytes.fromhex(read_secret(path).decode().strip())
        return self.rotate(role)

    def rotate(self, role: JoinRole) -> bytes:
        """A new secret for `role`: tokens made with the old one no longer admit new nodes."""
        secret = secrets.token_bytes(SECRET_BYTES)
        write_secret(self._secret_path(role), secret.hex().encode() + b"\n")
        self._secrets[role] = secret
        return secret

    def server_files(self, addresses: tuple[str, ...], now: datetime) -> tuple[Path, Path]:
        """A certificate for this manager's TLS listener, valid for `addresses` (made afresh at each
        start, so a changed address is always covered): the certificate and key files."""
        key = new_private_key()
        cert = self.ca.issue(
            make_csr(key),
            node_id=f"manager-{secrets.token_hex(4)}",
            role=JoinRole.MANAGER.value,
            cluster_id=self.ca.cluster_id,
            now=now,
            addresses=addresses,
        )
        cert_path, key_path = self._directory / "manager.crt", self._directory / "manager.key"
        write_secret(key_path, key_pem(key))
        write_secret(cert_path, cert + self.ca.cert_pem)
        return cert_path, key_path

    def tokens(self) -> JoinTokens:
        digest = self.ca.digest
        return JoinTokens(
            worker=str(make_join_token(digest, self._secrets[JoinRole.WORKER])),
            manager=str(make_join_token(digest, self._secrets[JoinRole.MANAGER])),
        )

    def renew(self, csr_pem: bytes, node_id: str, role: str, now: datetime) -> bytes:
        """A new certificate for a node already admitted (its session was opened with its certificate)."""
        return self.ca.issue(
            csr_pem,
            node_id=node_id,
            role=role,
            cluster_id=self.ca.cluster_id,
            now=now,
            lifetime=self.node_lifetime,
        )

    def join(
        self, request: JoinRequest, node_id: str, now: datetime, lifetime: timedelta | None = None
    ) -> JoinAnswer:
        """Admit a node: its token's role, and a certificate for its key naming `node_id`."""
        role = role_of_token(parse_join_token(request.join_token), self.ca.digest, self._secrets)
        cluster_id = self.ca.cluster_id
        try:
            cert = self.ca.issue(
                request.csr_pem.encode(),
                node_id=node_id,
                role=role.value,
                cluster_id=cluster_id,
                now=now,
                lifetime=lifetime or self.node_lifetime,
            )
        except CertificateError as error:
            raise InvalidInput(str(error), field="csr_pem") from None
        return JoinAnswer(
            node_id=node_id, role=role, cert_pem=cert.decode(), ca_cert_pem=self.ca.cert_pem.decode()
        )
