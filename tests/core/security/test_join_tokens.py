"""Join tokens: SwarmKit's shape, round trips, and refusals that say nothing to a guesser."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treeherd.core.security.join_tokens import (
    DIGEST_CHARS,
    SECRET_CHARS,
    base36,
    make_join_token,
    parse_join_token,
    role_of_token,
)
from treeherd.model.errors import InvalidInput, Unauthenticated
from treeherd.model.security import JoinRole

CA = hashlib.sha256(b"the cluster CA").digest()
OTHER_CA = hashlib.sha256(b"another cluster's CA").digest()
SECRETS = {JoinRole.WORKER: bytes(range(16)), JoinRole.MANAGER: bytes(range(16, 32))}


def test_a_token_reads_as_swarmkit_shapes_it() -> None:
    token = str(make_join_token(CA, SECRETS[JoinRole.WORKER]))
    prefix, version, digest, secret = token.split("-")
    assert (prefix, version) == ("SWMTKN", "1")
    assert len(digest) == DIGEST_CHARS
    assert len(secret) == SECRET_CHARS
    assert digest == base36(CA, DIGEST_CHARS)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_format_then_parse_is_the_same_token(digest: bytes, secret: bytes) -> None:
    token = make_join_token(digest, secret)
    assert parse_join_token(f"  {token}\n") == token


@given(st.binary(min_size=1, max_size=32))
def test_base36_keeps_the_number(data: bytes) -> None:
    assert int(base36(data, DIGEST_CHARS), 36) == int.from_bytes(data, "big")


def test_each_secret_admits_its_own_role() -> None:
    for role, secret in SECRETS.items():
        assert role_of_token(make_join_token(CA, secret), CA, SECRETS) is role


@pytest.mark.parametrize(
    "token",
    [
        make_join_token(OTHER_CA, SECRETS[JoinRole.WORKER]),  # pins another CA
        make_join_token(CA, bytes(16)),  # a secret no role has (or a rotated one)
    ],
)
def test_a_wrong_token_is_refused_with_one_message(token: object) -> None:
    with pytest.raises(Unauthenticated) as refused:
        role_of_token(token, CA, SECRETS)  # type: ignore[arg-type]
    assert str(refused.value) == "the join token was refused: ask an administrator for a current one"


def test_a_rotated_secret_no_longer_admits() -> None:
    old = make_join_token(CA, SECRETS[JoinRole.WORKER])
    rotated = {**SECRETS, JoinRole.WORKER: bytes(range(32, 48))}
    with pytest.raises(Unauthenticated):
        role_of_token(old, CA, rotated)
    assert role_of_token(make_join_token(CA, rotated[JoinRole.WORKER]), CA, rotated) is JoinRole.WORKER


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "malformed"),
        ("hello", "malformed"),
        ("SWMTKN-2-" + "0" * 50 + "-" + "0" * 25, "version '2'"),
        ("SWMTKN-1-" + "0" * 49 + "-" + "0" * 25, "digest should be 50 characters"),
        ("SWMTKN-1-" + "0" * 50 + "-" + "Z" * 25, "secret should be 25 characters"),
        ("SWMTKN-1-" + "0" * 50 + "-" + "0" * 25 + "-x", "malformed"),
    ],
)
def test_a_malformed_token_says_what_is_wrong_and_where_to_get_one(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_join_token(text)
    assert says in str(error.value)
    assert "treeherd cluster join-token" in str(error.value)
