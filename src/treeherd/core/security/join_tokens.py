"""Join tokens in SwarmKit's shape: `SWMTKN-1-<CA digest>-<secret>`.

The digest (the SHA-256 of the cluster CA certificate's DER, in base 36) lets a joining node pin the CA
before it trusts anything the manager sends: no trust on first use. The secret (128 random bits, in base
36) says which role the node joins as: the cluster keeps one secret for workers and one for managers,
and rotating one makes every token made with it useless for new joins (nodes that joined keep their
certificates). Formatting, parsing and matching are pure; the secrets' randomness comes from the caller.
"""

from __future__ import annotations

import hmac
import string

import msgspec

from treeherd.model.errors import InvalidInput, Unauthenticated
from treeherd.model.security import JoinRole

PREFIX = "SWMTKN"
VERSION = "1"
DIGEST_CHARS = 50  # 36**50 > 2**256
SECRET_CHARS = 25  # 36**25 > 2**128
SECRET_BYTES = 16
_ALPHABET = string.digits + string.ascii_lowercase
_WHERE = "copy it again from `treeherd cluster join-token worker` (or `manager`) on a manager"


class JoinToken(msgspec.Struct, frozen=True, kw_only=True):
    ca_digest: str  # base 36, DIGEST_CHARS long
    secret: str  # base 36, SECRET_CHARS long

    def __str__(self) -> str:
        return f"{PREFIX}-{VERSION}-{self.ca_digest}-{self.secret}"


def base36(data: bytes, width: int) -> str:
    """`data` as a big-endian number in base 36, zero-padded to `width` characters."""
    value = int.from_bytes(data, "big")
    digits: list[str] = []
    while value:
        value, rest = divmod(value, 36)
        digits.append(_ALPHABET[rest])
    text = "".join(reversed(digits)) or "0"
    if len(text) > width:
        raise ValueError(f"{len(data)} bytes do not fit in {width} base-36 characters")
    return text.rjust(width, "0")


def make_join_token(ca_sha256: bytes, secret: bytes) -> JoinToken:
    """The token for a CA certificate's SHA-256 digest and a role's 16-byte secret."""
    if len(ca_sha256) != 32:
        raise ValueError("the CA digest must be a SHA-256 digest (32 bytes)")
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a join secret is {SECRET_BYTES} bytes")
    return JoinToken(ca_digest=base36(ca_sha256, DIGEST_CHARS), secret=base36(secret, SECRET_CHARS))


def parse_join_token(text: str) -> JoinToken:
    """A token typed or pasted by a person; a malformed one raises InvalidInput saying what to do."""
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise InvalidInput(
            f"the join token is malformed: it should read {PREFIX}-{VERSION}-<digest>-<secret>; {_WHERE}",
            field="join_token",
        )
    _, version, digest, secret = parts
    if version != VERSION:
        raise InvalidInput(
            f"the join token has version {version!r}; this treeherd knows version {VERSION}: {_WHERE}",
            field="join_token",
        )
    for name, part, width in (("digest", digest, DIGEST_CHARS), ("secret", secret, SECRET_CHARS)):
        if len(part) != width or any(char not in _ALPHABET for char in part):
            raise InvalidInput(
                f"the join token's {name} should be {width} characters of 0-9 and a-z; {_WHERE}",
                field="join_token",
            )
    return JoinToken(ca_digest=digest, secret=secret)


def role_of_token(token: JoinToken, ca_sha256: bytes, secrets: dict[JoinRole, bytes]) -> JoinRole:
    """The role a presented token admits to, checked in constant time against each role's secret.

    A token for another CA or with an unknown (or rotated) secret raises Unauthenticated with one
    message for every case, so that a guesser learns nothing."""
    refused = Unauthenticated("the join token was refused: ask an administrator for a current one")
    if not hmac.compare_digest(token.ca_digest, base36(ca_sha256, DIGEST_CHARS)):
        raise refused
    found: JoinRole | None = None
    for role, secret in secrets.items():
        if hmac.compare_digest(token.secret, base36(secret, SECRET_CHARS)):
            found = role
    if found is None:
        raise refused
    return found
