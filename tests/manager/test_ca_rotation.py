"""The cluster authority's root rotation: new root, bridge, progress, persistence and retirement."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from treeherd.manager.cluster_ca import ClusterAuthority
from treeherd.model.errors import InvalidInput, Refused
from treeherd.model.security import RootRotation
from treeherd.testing.factories import FIXED_NOW
from treeherd.transport.pki import CertificateError, ClusterCA, make_csr, new_private_key, verify_issued
from treeherd.transport.secret_files import read_secret, write_secret

NOW = FIXED_NOW


def renew(authority: ClusterAuthority, node_id: str) -> bytes:
    return authority.renew(make_csr(new_private_key()), node_id, "worker", NOW)


def test_a_rotation_signs_with_a_new_root_bridged_to_the_old_one(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    old = authority.ca.cert_pem
    old_tokens = authority.tokens()
    authority.begin_rotation(NOW)
    assert authority.ca.cert_pem != old
    assert authority.trust_bundle() == authority.ca.cert_pem + old
    assert (tmp_path / "ca.crt").read_bytes() == authority.trust_bundle()
    cert = renew(authority, "node-a")
    # A node still trusting only the old root accepts it; so does one with the new bundle.
    assert verify_issued(cert, old, NOW).node_id == "node-a"
    assert verify_issued(cert, authority.trust_bundle(), NOW).node_id == "node-a"
    assert authority.tokens() != old_tokens  # tokens pin the new root
    with pytest.raises(Refused, match="already under way"):
        authority.begin_rotation(NOW)


def test_progress_counts_the_renewed_nodes_and_retirement_drops_the_old_root(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    old = authority.ca.cert_pem
    assert not authority.status(["node-a"]).rotating
    authority.begin_rotation(NOW, deadline=timedelta(minutes=10))
    renew(authority, "node-a")
    status = authority.status(["node-a", "node-b"])
    assert (status.rotating, status.done, status.pending) == (True, ["node-a"], ["node-b"])
    assert not authority.should_retire(["node-a", "node-b"], NOW)
    assert authority.should_retire(["node-a"], NOW)
    assert authority.should_retire(["node-a", "node-b"], NOW + timedelta(minutes=10))  # the deadline
    assert authority.retire_old_root() == ["node-a"]
    assert authority.trust_bundle() == authority.ca.cert_pem == (tmp_path / "ca.crt").read_bytes()
    assert not (tmp_path / "secrets" / "rotation.json").exists()
    cert = renew(authority, "node-b")
    assert cert.count(b"BEGIN CERTIFICATE") == 1  # no bridge any more
    with pytest.raises(CertificateError):
        verify_issued(cert, old, NOW)


def test_a_restart_mid_rotation_continues_it(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    authority.begin_rotation(NOW)
    renew(authority, "node-a")
    again = ClusterAuthority.open(tmp_path, NOW)
    assert again.ca.cert_pem == authority.ca.cert_pem
    assert again.trust_bundle() == authority.trust_bundle()
    assert again.status(["node-a", "node-b"]).pending == ["node-b"]


def test_a_crash_between_the_state_and_the_switch_is_completed_at_the_next_start(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    old = authority.ca
    new = ClusterCA.create(old.cluster_id, NOW)
    # What begin_rotation leaves when it stops after saving its state, before the switch.
    write_secret(tmp_path / "secrets" / "ca-next.key", new.key_pem)
    state = RootRotation(
        old_cert_pem=old.cert_pem.decode(),
        new_cert_pem=new.cert_pem.decode(),
        cross_signed_pem=old.cross_sign(new.cert_pem, NOW).decode(),
        started=NOW,
        deadline=NOW + timedelta(hours=1),
    )
    write_secret(tmp_path / "secrets" / "rotation.json", msgspec.json.encode(state))
    again = ClusterAuthority.open(tmp_path, NOW)
    assert again.ca.cert_pem == new.cert_pem
    assert read_secret(tmp_path / "secrets" / "ca.key") == new.key_pem
    assert not (tmp_path / "secrets" / "ca-next.key").exists()
    assert verify_issued(renew(again, "node-a"), old.cert_pem, NOW).node_id == "node-a"


def test_a_crash_before_the_state_leaves_no_rotation(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    write_secret(tmp_path / "secrets" / "ca-next.key", ClusterCA.create("x", NOW).key_pem)
    again = ClusterAuthority.open(tmp_path, NOW)
    assert again.ca.cert_pem == authority.ca.cert_pem and again.rotation is None
    assert not (tmp_path / "secrets" / "ca-next.key").exists()


def test_an_external_new_root_is_adopted_and_a_bad_one_refused(tmp_path: Path) -> None:
    authority = ClusterAuthority.open(tmp_path, NOW)
    current = authority.ca
    with pytest.raises(InvalidInput, match="the current one"):
        authority.begin_rotation(NOW, external=(current.cert_pem, current.key_pem))
    other = ClusterCA.create("elsewhere", NOW)
    with pytest.raises(InvalidInput, match="does not belong"):
        authority.begin_rotation(NOW, external=(other.cert_pem, ClusterCA.create("x", NOW).key_pem))
    assert authority.rotation is None and authority.ca is current
    authority.begin_rotation(NOW, external=(other.cert_pem, other.key_pem))
    assert authority.ca.cert_pem == other.cert_pem
    assert ClusterAuthority.open(tmp_path, NOW).ca.cert_pem == other.cert_pem
