"""The agent's certificate keeper: when it renews, and which answers it keeps."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from treeherd.agent.certificates import CertificateKeeper
from treeherd.model.wire import CertificateIssued
from treeherd.testing.factories import FIXED_NOW
from treeherd.transport.join import identity_files
from treeherd.transport.pki import ClusterCA, identity_of, key_pem, new_private_key
from treeherd.transport.secret_files import write_secret

ISSUED = FIXED_NOW


class Clock:
    def __init__(self) -> None:
        self.now = ISSUED

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


def joined(tmp_path: Path, ca: ClusterCA) -> None:
    from treeherd.transport.pki import make_csr

    key = new_private_key()
    cert = ca.issue(
        make_csr(key),
        node_id="node-a",
        role="worker",
        cluster_id="c",
        now=ISSUED,
        lifetime=timedelta(days=90),
    )
    cert_path, key_path, ca_path = identity_files(tmp_path)
    write_secret(cert_path, cert)
    write_secret(key_path, key_pem(key))
    write_secret(ca_path, ca.cert_pem)


def sign(ca: ClusterCA, csr: str, node_id: str = "node-a", now=ISSUED) -> CertificateIssued:  # type: ignore[no-untyped-def]
    return CertificateIssued(
        cert_pem=ca.issue(csr.encode(), node_id=node_id, role="worker", cluster_id="c", now=now).decode()
    )


def test_renewal_comes_in_the_last_third_and_the_new_certificate_is_kept(tmp_path: Path) -> None:
    ca = ClusterCA.create("c", ISSUED)
    joined(tmp_path, ca)
    clock = Clock()
    keeper = CertificateKeeper(tmp_path, clock=clock, rng=random.Random(7))
    when = keeper.renew_at()
    assert ISSUED + timedelta(days=60) <= when < ISSUED + timedelta(days=90)
    clock.now = when - timedelta(seconds=1)
    assert not keeper.due()
    clock.now = when
    assert keeper.due()
    request = keeper.request()
    assert not keeper.due()  # one request at a time
    assert keeper.accept(sign(ca, request, now=clock.now))
    assert keeper.renewals == 1
    assert identity_of(identity_files(tmp_path)[0].read_bytes()).not_after > ISSUED + timedelta(days=90)
    assert not keeper.due()


def test_a_refused_or_foreign_answer_is_not_kept_and_asked_again_later(tmp_path: Path) -> None:
    ca = ClusterCA.create("c", ISSUED)
    joined(tmp_path, ca)
    before = identity_files(tmp_path)[0].read_bytes()
    clock = Clock()
    keeper = CertificateKeeper(tmp_path, clock=clock, rng=random.Random(7))  # a fixed renewal point
    clock.now = ISSUED + timedelta(days=89)
    assert not keeper.accept(CertificateIssued(error="no"))  # nothing asked: nothing kept
    answers = [
        lambda csr: CertificateIssued(error="this manager issues no certificates"),
        lambda csr: sign(ca, csr, node_id="node-b", now=clock.now),  # another node
        lambda csr: sign(ClusterCA.create("x", ISSUED), csr, now=clock.now),  # another CA
    ]
    for answer in answers:
        assert keeper.due()
        assert not keeper.accept(answer(keeper.request()))
        assert identity_files(tmp_path)[0].read_bytes() == before
        assert not keeper.due()  # a minute later
        clock.now += timedelta(minutes=1, seconds=1)


def test_a_request_lost_with_its_session_is_asked_again(tmp_path: Path) -> None:
    ca = ClusterCA.create("c", ISSUED)
    joined(tmp_path, ca)
    clock = Clock()
    keeper = CertificateKeeper(tmp_path, clock=clock, rng=random.Random(7))  # a fixed renewal point
    clock.now = ISSUED + timedelta(days=89)
    keeper.request()
    assert not keeper.due()
    clock.now += timedelta(minutes=2)
    assert keeper.due()


def test_asked_to_renew_at_once_it_takes_the_new_root_and_the_new_trusted_roots(tmp_path: Path) -> None:
    from treeherd.manager.cluster_ca import ClusterAuthority

    authority = ClusterAuthority.open(tmp_path / "manager", ISSUED)
    joined(tmp_path, authority.ca)
    clock = Clock()
    keeper = CertificateKeeper(tmp_path, clock=clock, rng=random.Random(7))
    assert not keeper.due()
    authority.begin_rotation(ISSUED)
    keeper.renew_now()
    assert keeper.due()
    csr = keeper.request()
    cert = authority.renew(csr.encode(), "node-a", "worker", ISSUED)
    answer = CertificateIssued(cert_pem=cert.decode(), ca_cert_pem=authority.trust_bundle().decode())
    assert keeper.accept(answer)
    cert_path, _, ca_path = identity_files(tmp_path)
    assert ca_path.read_bytes() == authority.trust_bundle()
    assert identity_of(cert_path.read_bytes()).node_id == "node-a"
    assert not keeper.due()


def test_trusted_roots_that_do_not_cover_the_certificate_are_not_kept(tmp_path: Path) -> None:
    ca = ClusterCA.create("c", ISSUED)
    joined(tmp_path, ca)
    keeper = CertificateKeeper(tmp_path, clock=Clock(), rng=random.Random(7))
    keeper.renew_now()
    answer = sign(ca, keeper.request())
    stranger = ClusterCA.create("c", ISSUED)
    forged = CertificateIssued(cert_pem=answer.cert_pem, ca_cert_pem=stranger.cert_pem.decode())
    assert not keeper.accept(forged)
    assert identity_files(tmp_path)[2].read_bytes() == ca.cert_pem
