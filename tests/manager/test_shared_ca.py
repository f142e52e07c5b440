"""The cluster CA shared by the managers of one cluster: published by the first, installed by the
others, join secrets taken in again from the shared copy, and what is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from treeherd.manager.cluster_ca import CaError, ClusterAuthority
from treeherd.model.errors import Refused, Unauthenticated
from treeherd.model.security import JoinRequest, JoinRole, SharedCa
from treeherd.testing.factories import FIXED_NOW
from treeherd.transport.pki import ClusterCA, make_csr, new_private_key

NOW = FIXED_NOW


class MemoryKeeper:
    """The shared key as etcd keeps it: created once, then replaced by `write`."""

    def __init__(self, hide_first_read: bool = False) -> None:
        self.value: SharedCa | None = None
        self._hide = hide_first_read  # a manager that read "nothing" just before another published

    async def read(self) -> SharedCa | None:
        if self._hide:
            self._hide = False
            return None
        return self.value

    async def publish(self, ca: SharedCa) -> SharedCa:
        if self.value is None:
            self.value = ca
        return self.value

    async def write(self, ca: SharedCa) -> None:
        self.value = ca


def open_shared(keeper: MemoryKeeper, data_dir: Path, **kwargs: object) -> ClusterAuthority:
    return asyncio.run(ClusterAuthority.open_shared(keeper, data_dir, NOW, **kwargs))  # type: ignore[arg-type]


def join_request(token: str) -> JoinRequest:
    return JoinRequest(join_token=token, csr_pem=make_csr(new_private_key()).decode())


def test_the_first_manager_publishes_its_ca_and_the_others_install_it(tmp_path: Path) -> None:
    keeper = MemoryKeeper()
    first = open_shared(keeper, tmp_path / "m1")
    second = open_shared(keeper, tmp_path / "m2")
    assert keeper.value == first.shared() == second.shared()
    assert (tmp_path / "m1" / "ca.crt").read_bytes() == (tmp_path / "m2" / "ca.crt").read_bytes()
    assert first.tokens() == second.tokens()
    # A token of one admits through the other.
    answer = second.join(join_request(first.tokens().worker), "node-a", NOW)
    assert answer.role is JoinRole.WORKER


def test_a_manager_that_lost_the_race_to_publish_takes_the_winners_ca(tmp_path: Path) -> None:
    keeper = MemoryKeeper()
    winner = open_shared(keeper, tmp_path / "m1")
    keeper._hide = True  # the loser read nothing, made its own CA, and found the winner's on publishing
    loser = open_shared(keeper, tmp_path / "m2")
    assert loser.shared() == winner.shared()
    assert (tmp_path / "m2" / "ca.crt").read_bytes() == winner.ca.cert_pem


def test_a_join_token_rotated_through_one_manager_is_refused_by_every_manager(tmp_path: Path) -> None:
    keeper = MemoryKeeper()
    one, two = open_shared(keeper, tmp_path / "m1"), open_shared(keeper, tmp_path / "m2")
    old = one.tokens().worker
    asyncio.run(one.rotate_shared(JoinRole.WORKER))
    asyncio.run(two.refresh())
    assert two.tokens() == one.tokens() and two.tokens().worker != old
    with pytest.raises(Unauthenticated):
        two.join(join_request(old), "node-b", NOW)
    assert two.join(join_request(one.tokens().worker), "node-b", NOW).role is JoinRole.WORKER
    # Restarted, the second manager loads the rotated secret from its own files too.
    assert open_shared(keeper, tmp_path / "m2").tokens() == one.tokens()


def test_an_external_ca_that_is_not_the_clusters_is_refused(tmp_path: Path) -> None:
    keeper = MemoryKeeper()
    open_shared(keeper, tmp_path / "m1")
    other = ClusterCA.create("other", NOW)
    cert, key = tmp_path / "other.crt", tmp_path / "other.key"
    cert.write_bytes(other.cert_pem)
    key.write_bytes(other.key_pem)
    with pytest.raises(CaError, match="already has a CA"):
        open_shared(keeper, tmp_path / "m2", external=(cert, key))
    assert not (tmp_path / "m2" / "ca.crt").exists()  # nothing written


def test_a_root_rotation_is_refused_with_a_shared_ca(tmp_path: Path) -> None:
    authority = open_shared(MemoryKeeper(), tmp_path / "m1")
    with pytest.raises(Refused, match="several managers"):
        authority.begin_rotation(NOW)
