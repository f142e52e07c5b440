"""Who may use the API: the roles, and the bearer tokens people and scripts present.

A token's secret is never stored: only its SHA-256 (the secret is 256 random bits, so the digest
cannot be reversed or guessed), and the secret is shown once, when the token is made.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

from treeherd.model.base import Object


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # services, tree, routes, domains, pins, policies
    VIEWER = "viewer"  # reads only
    AGENT = "agent"  # its own session on the agent channel
    GATEWAY = "gateway"  # the edge snapshot, its reports and events
    ENC = "enc"  # Puppet classification answers and machine reports


class ApiToken(Object, frozen=True, kw_only=True, tag="token"):
    """A bearer token: its name, its role, the digest of its secret and when it expires."""

    kind: ClassVar[str] = "token"
    name: str
    role: Role
    secret_sha256: str  # hex
    expires_at: datetime | None = None


TOKEN_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_TOKEN_LIFETIME_S = 3650 * 86400


class RevokedNode(Object, frozen=True, kw_only=True, tag="revoked_node"):
    """A node certificate refused for good: its machine was removed (`node rm`). The node joins again
    with a join token to get a new certificate."""

    kind: ClassVar[str] = "revoked_node"
    node_identity: str
    hostname: str


class JoinedKey(Object, frozen=True, kw_only=True, tag="joined_key"):
    """A public key that joined the cluster (the SHA-256 of its SubjectPublicKeyInfo) and the node id it
    was certified for: a key joins once, so a join request sent again (replayed) is refused."""

    kind: ClassVar[str] = "joined_key"
    key_sha256: str
    node_id: str


class UserCertificate(Object, frozen=True, kw_only=True, tag="user_cert"):
    """A user certificate the cluster CA issued (`treeherd cert create`): whom it names, its role, its
    serial number (hex), when it expires, and when it was revoked (`treeherd cert rm`). A user
    certificate with no record here, or a revoked one, authenticates no one."""

    kind: ClassVar[str] = "user_cert"
    name: str
    role: Role
    serial: str
    expires_at: datetime
    revoked_at: datetime | None = None


class TokenCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=TOKEN_NAME_PATTERN, description="a-z, 0-9, '.', '_', '-'")]
    role: Role
    # Lifetime in whole seconds from now; None: until removed.
    expires_in_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKEN_LIFETIME_S)] | None = None


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: everything but the digest."""

    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None = None


class TokenCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a token's creation: the only time its full text is shown."""

    name: str
    role: Role
    token: str
    expires_at: datetime | None = None


class JoinRole(enum.StrEnum):
    """What a join token admits a node as."""

    WORKER = "worker"
    MANAGER = "manager"


class JoinTokens(msgspec.Struct, frozen=True, kw_only=True):
    worker: str
    manager: str


JOIN_TOKEN_PATTERN = r"^\s*SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}\s*$"


class JoinRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    join_token: Annotated[str, msgspec.Meta(pattern=JOIN_TOKEN_PATTERN)]
    csr_pem: Annotated[
        str, msgspec.Meta(pattern=r"^\s*-----BEGIN CERTIFICATE REQUEST-----", max_length=16384)
    ]


class JoinAnswer(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    role: JoinRole
    cert_pem: str
    ca_cert_pem: str


class SharedCa(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster CA as the managers on one etcd prefix share it: the signing root's certificate and
    key (PEM) and the join secrets by role (hex)."""

    cert_pem: str
    key_pem: str
    join_secrets: dict[str, str]


class RootRotation(msgspec.Struct, frozen=True, kw_only=True):
    """A root CA rotation under way (kept in the manager's secrets directory across restarts)."""

    old_cert_pem: str
    new_cert_pem: str
    cross_signed_pem: str  # the new root signed by the old one: the bridge for nodes not yet renewed
    started: datetime
    deadline: datetime  # the old root is retired then even if some nodes have not renewed
    renewed: list[str] = msgspec.field(default_factory=list)  # node ids holding a new-root certificate


class CertCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A user certificate for the API: its name, role, and the signing request of the user's key."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")]
    role: Role
    csr_pem: Annotated[str, msgspec.Meta(max_length=16384)]


class CertIssued(msgspec.Struct, frozen=True, kw_only=True):
    cert_pem: str
    ca_cert_pem: str


class CaRotate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Start a root rotation; with an external CA's certificate and key (PEM), to that root."""

    external_ca_cert_pem: str = ""
    external_ca_key_pem: str = ""


class CaStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster CA as `treeherd cluster ca` shows it."""

    digest: str
    rotating: bool
    started: datetime | None = None
    deadline: datetime | None = None
    done: list[str] = msgspec.field(default_factory=list)
    pending: list[str] = msgspec.field(default_factory=list)


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """One refused authentication or authorisation: when, from which address, what was asked (an
    operation, a join, an agent session), who asked when known (a token's name or a node id, never a
    secret), and why."""

    at: datetime
    address: str
    what: str
    reason: str
    caller: str | None = None


class AuditLog(Object, frozen=True, kw_only=True, tag="audit"):
    """The latest refusals (the last 100; each update is an event of the stream, so a follower sees
    them all) and how many there were since the log was made."""

    kind: ClassVar[str] = "audit"
    name: str
    recent: list[Refusal] = []
    refused_total: int = 0
    dropped_total: int = 0  # refusals that came faster than the log records them (counted, not kept)

    def summary(self) -> str:
        """One line for `treeherd events`: the last refusal."""
        if not self.recent:
            return ""
        last = self.recent[-1]
        return f"refused {last.what} from {last.address}: {last.reason}"
