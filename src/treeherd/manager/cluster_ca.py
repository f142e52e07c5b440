"""The manager's certificate authority on disk: the root, the join secrets, and the joins it signs.

At a manager's first start it makes the cluster's root CA (or adopts an external one given with
`--external-ca-cert/--external-ca-key`) and one join secret per role, all in DATA_DIR/secrets (0600
files in a 0700 directory); the root's certificate is also written, public, to DATA_DIR/ca.crt. A
join (`join`) checks the token against the secrets (core.security.join_tokens), then signs the node's
request with the subject the manager decides: a new node id and the token's role.

A root rotation (`begin_rotation`) makes a new root, cross-signs it with the old key, and from then
on signs with the new root, handing out the new root's certificate chained to the cross-signed one
so that nodes still trusting only the old root accept it; DATA_DIR/ca.crt becomes the trust bundle
(new root, then old). Its state, in secrets/rotation.json, lists the nodes already renewed, and
survives a restart; `retire_old_root` ends it, after which only the new root is trusted.

Managers that share an etcd store share one CA (`open_shared`): the first to start publishes its root
and join secrets in etcd (`store.etcd_secrets`), the others install that copy in their data directories,
and join secrets are read again from etcd before each use, so a token rotated through one manager is the
one every manager admits. A root rotation is not yet driven across several managers: it is refused there.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import msgspec

from treeherd.core.security.join_tokens import SECRET_BYTES, make_join_token, parse_join_token, role_of_token
from treeherd.model.errors import InvalidInput, Refused
from treeherd.model.security import (
    CaStatus,
    JoinAnswer,
    JoinRequest,
    JoinRole,
    JoinTokens,
    RootRotation,
    SharedCa,
)
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
ROTATION_DEADLINE = timedelta(hours=1)  # the old root is retired then, whoever has not renewed


class CaError(Exception):
    """The CA files cannot be used; the message says why and what to do."""


class SharedCaKeeper(Protocol):
    """Where the managers of one cluster keep their shared CA (`store.etcd_secrets.SharedCaKey`)."""

    def read(self) -> Awaitable[SharedCa | None]: ...

    def publish(self, ca: SharedCa) -> Awaitable[SharedCa]: ...

    def write(self, ca: SharedCa) -> Awaitable[None]: ...


class ClusterAuthority:
    """The root CA and join secrets of a cluster, kept in a manager's data directory."""

    def __init__(self, ca: ClusterCA, secrets_by_role: dict[JoinRole, bytes], directory: Path) -> None:
        self.ca = ca
        self.node_lifetime = DEFAULT_NODE_LIFETIME  # of the certificates it issues (--cert-expiry)
        self._secrets = secrets_by_role
        self._directory = directory
        self.rotation: RootRotation | None = None
        self._keeper: SharedCaKeeper | None = None  # set when the CA is shared with other managers

    @classmethod
    async def open_shared(
        cls,
        keeper: SharedCaKeeper,
        data_dir: Path,
        now: datetime,
        *,
        external: tuple[Path, Path] | None = None,
    ) -> ClusterAuthority:
        """The CA shared by the managers of one cluster: the one published in `keeper`, installed in
        `data_dir`; or, for the first manager, its own (made or loaded as `open` does), published."""
        shared = await keeper.read()
        if shared is None:
            own = cls.open(data_dir, now, external=external)
            if own.rotation is not None:
                raise CaError(
                    f"{data_dir} holds a root CA rotation under way: finish it with one manager before"
                    " sharing the store with others"
                )
            shared = await keeper.publish(own.shared())
            if shared == own.shared():
                own._keeper = keeper
                log.info("this manager's cluster CA is now the one every manager of the cluster uses")
                return own
        if external is not None and external[0].read_bytes().decode() != shared.cert_pem:
            raise CaError(
                f"the cluster on this store already has a CA that is not {external[0]}: start this manager"
                " without --external-ca-cert/--external-ca-key to use the cluster's"
            )
        _install(data_dir, shared)
        authority = cls.open(data_dir, now)
        authority._keeper = keeper
        return authority

    def shared(self) -> SharedCa:
        """This CA as the managers of a cluster share it."""
        return SharedCa(
            cert_pem=self.ca.cert_pem.decode(),
            key_pem=self.ca.key_pem.decode(),
            join_secrets={role.value: secret.hex() for role, secret in self._secrets.items()},
        )

    async def refresh(self) -> None:
        """Take in join secrets rotated through another manager (shared CA only)."""
        if self._keeper is None:
            return
        shared = await self._keeper.read()
        if shared is None or shared.cert_pem.encode() != self.ca.cert_pem:
            return  # not this CA's secrets (never expected): keep what this manager has
        for role in JoinRole:
            value = shared.join_secrets.get(role.value)
            if value is not None and bytes.fromhex(value) != self._secrets.get(role):
                write_secret(self._secret_path(role), value.encode() + b"\n")
                self._secrets[role] = bytes.fromhex(value)

    async def rotate_shared(self, role: JoinRole) -> None:
        """`rotate`, then tell the other managers (shared CA only)."""
        await self.refresh()
        self.rotate(role)
        if self._keeper is not None:
            await self._keeper.write(self.shared())

    @classmethod
    def open(
        cls, data_dir: Path, now: datetime, *, external: tuple[Path, Path] | None = None
    ) -> ClusterAuthority:
        """Load the CA of `data_dir`, or make it (from `external`, a certificate and key, if given)."""
        directory = data_dir / "secrets"
        ensure_private_dir(directory)
        key_path, cert_path = directory / "ca.key", data_dir / "ca.crt"
        try:
            rotation = _load_rotation(directory / "rotation.json")
            _finish_switch(directory, cert_path, rotation)
            if key_path.exists():
                ca = ClusterCA(_first_cert(cert_path.read_bytes()), read_secret(key_path))
                if external is not None and rotation is None and external[0].read_bytes() != ca.cert_pem:
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
        authority.rotation = rotation
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
        write_secret(cert_path, cert + self._chain())
        return cert_path, key_path

    def _chain(self) -> bytes:
        """What follows an issued certificate: the cross-signed root during a rotation, else the root."""
        if self.rotation is not None:
            return self.rotation.cross_signed_pem.encode()
        return self.ca.cert_pem

    def trust_bundle(self) -> bytes:
        """The roots a node or client should trust now: the signing root, and the old one mid-rotation."""
        if self.rotation is not None:
            return self.ca.cert_pem + self.rotation.old_cert_pem.encode()
        return self.ca.cert_pem

    def begin_rotation(
        self,
        now: datetime,
        *,
        external: tuple[bytes, bytes] | None = None,
        deadline: timedelta = ROTATION_DEADLINE,
    ) -> RootRotation:
        """Make a new root (or adopt `external`, a certificate and key), cross-sign it with the current
        one and sign with it from now on. Refused while a rotation is under way."""
        if self.rotation is not None:
            raise Refused(
                "a root rotation is already under way: wait for it to finish (`treeherd cluster ca`)"
            )
        if self._keeper is not None:
            raise Refused(
                "a root CA rotation is not supported yet with several managers on etcd: the CA stays as it is"
            )
        try:
            new = ClusterCA(*external) if external is not None else ClusterCA.create(self.ca.cluster_id, now)
        except CertificateError as error:
            raise InvalidInput(f"the new CA cannot be used: {error}", field="external_ca") from None
        if new.cert_pem == self.ca.cert_pem:
            raise InvalidInput(
                "the new CA is the current one: give another certificate and key", field="external_ca"
            )
        rotation = RootRotation(
            old_cert_pem=self.ca.cert_pem.decode(),
            new_cert_pem=new.cert_pem.decode(),
            cross_signed_pem=self.ca.cross_sign(new.cert_pem, now).decode(),
            started=now,
            deadline=now + deadline,
        )
        # The new key first, then the state naming it, then the switch: a crash at any point leaves
        # either no rotation (the stray key is overwritten next time) or one that `open` completes.
        write_secret(self._directory / "ca-next.key", new.key_pem)
        self._save(rotation)
        _finish_switch(self._directory, self._directory.parent / "ca.crt", rotation)
        self.ca, self.rotation = new, rotation
        log.info("root CA rotation started; the old root is retired by %s", rotation.deadline.isoformat())
        return rotation

    def status(self, node_ids: Iterable[str]) -> CaStatus:
        """The CA's digest and, mid-rotation, which of `node_ids` (the cluster's admitted nodes) have renewed."""
        if self.rotation is None:
            return CaStatus(digest=self.ca.digest.hex(), rotating=False)
        done = set(self.rotation.renewed)
        nodes = sorted(set(node_ids))
        return CaStatus(
            digest=self.ca.digest.hex(),
            rotating=True,
            started=self.rotation.started,
            deadline=self.rotation.deadline,
            done=[node for node in nodes if node in done],
            pending=[node for node in nodes if node not in done],
        )

    def should_retire(self, node_ids: Iterable[str], now: datetime) -> bool:
        """Whether the rotation can end: every admitted node renewed, or its deadline passed."""
        if self.rotation is None:
            return False
        return now >= self.rotation.deadline or set(node_ids) <= set(self.rotation.renewed)

    def retire_old_root(self) -> list[str]:
        """End the rotation: only the new root is trusted from now on. The nodes that had renewed."""
        if self.rotation is None:
            return []
        renewed = list(self.rotation.renewed)
        (self._directory.parent / "ca.crt").write_bytes(self.ca.cert_pem)
        (self._directory / "rotation.json").unlink(missing_ok=True)
        self.rotation = None
        log.info("root CA rotation finished: the old root is retired")
        return renewed

    def _save(self, rotation: RootRotation) -> None:
        write_secret(self._directory / "rotation.json", msgspec.json.encode(rotation))

    def tokens(self) -> JoinTokens:
        digest = self.ca.digest
        return JoinTokens(
            worker=str(make_join_token(digest, self._secrets[JoinRole.WORKER])),
            manager=str(make_join_token(digest, self._secrets[JoinRole.MANAGER])),
        )

    def renew(self, csr_pem: bytes, node_id: str, role: str, now: datetime) -> bytes:
        """A new certificate for a node already admitted (its session was opened with its certificate);
        mid-rotation it comes from the new root, chained to the cross-signed one, and the node counts as done."""
        cert = self.ca.issue(
            csr_pem,
            node_id=node_id,
            role=role,
            cluster_id=self.ca.cluster_id,
            now=now,
            lifetime=self.node_lifetime,
        )
        if self.rotation is None:
            return cert
        if node_id not in self.rotation.renewed:
            self.rotation = msgspec.structs.replace(self.rotation, renewed=[*self.rotation.renewed, node_id])
            self._save(self.rotation)
        return cert + self._chain()

    def issue_user(self, csr_pem: bytes, name: str, role: str, now: datetime) -> bytes:
        """A user's client certificate for the API: `name` as its common name, `role` as its unit."""
        cert = self.ca.issue(
            csr_pem,
            node_id=name,
            role=role,
            cluster_id=self.ca.cluster_id,
            now=now,
            lifetime=self.node_lifetime,
        )
        return cert + self._chain() if self.rotation is not None else cert

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
        if self.rotation is not None:
            self.rotation = msgspec.structs.replace(self.rotation, renewed=[*self.rotation.renewed, node_id])
            self._save(self.rotation)
        return JoinAnswer(
            node_id=node_id, role=role, cert_pem=cert.decode(), ca_cert_pem=self.ca.cert_pem.decode()
        )


def _install(data_dir: Path, shared: SharedCa) -> None:
    """Write the cluster's shared CA into a manager's data directory, where `open` loads it from."""
    directory = data_dir / "secrets"
    try:
        ensure_private_dir(directory)
        if (directory / "rotation.json").exists():
            raise CaError(
                f"{data_dir} holds a root CA rotation of its own: it cannot join a cluster with a shared CA;"
                " use a new data directory"
            )
        write_secret(directory / "ca.key", shared.key_pem.encode())
        (data_dir / "ca.crt").write_bytes(shared.cert_pem.encode())
        for role, value in shared.join_secrets.items():
            write_secret(directory / f"join-{role}.secret", value.encode() + b"\n")
    except OSError as error:
        raise CaError(f"cannot write the cluster CA into {data_dir}: {error}") from None


def _first_cert(bundle: bytes) -> bytes:
    """The first certificate of a PEM bundle (DATA_DIR/ca.crt starts with the signing root)."""
    end = b"-----END CERTIFICATE-----"
    index = bundle.find(end)
    return bundle if index < 0 else bundle[: index + len(end)] + b"\n"


def _load_rotation(path: Path) -> RootRotation | None:
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(read_secret(path), type=RootRotation)
    except msgspec.DecodeError as error:
        raise CaError(
            f"the root rotation state {path} is unreadable ({error}): restore it or remove it"
        ) from None


def _finish_switch(directory: Path, cert_path: Path, rotation: RootRotation | None) -> None:
    """Make the rotation's new root the signing one, if a crash left the switch half done."""
    next_key = directory / "ca-next.key"
    if rotation is None:
        next_key.unlink(missing_ok=True)  # a rotation that never began
        return
    if next_key.exists():
        write_secret(directory / "ca.key", read_secret(next_key))
        next_key.unlink()
    cert_path.write_bytes(rotation.new_cert_pem.encode() + rotation.old_cert_pem.encode())
