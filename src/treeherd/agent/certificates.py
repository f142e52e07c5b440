"""A joined node's certificate over its life: renewed before expiry without leaving the session.

At a random point in the last third of the certificate's validity (core.security.renewal; the
randomness spreads the renewals of nodes that joined together) the agent makes a new key and sends a
signing request on its session; the manager answers a certificate naming the same node and role. The
new pair replaces the old files (0600) and the next connection uses it; the open session is untouched.
A refused or lost renewal is asked again a minute later. During a root rotation the manager asks for
a renewal at once; the answer then carries the new trusted roots, which replace the node's CA file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from treeherd.core.security.renewal import renewal_time
from treeherd.model.wire import CertificateIssued
from treeherd.transport.join import identity_files
from treeherd.transport.pki import (
    CLOCK_SKEW,
    CertificateError,
    identity_of,
    key_pem,
    make_csr,
    new_private_key,
    verify_issued,
)
from treeherd.transport.secret_files import read_secret, write_secret

log = logging.getLogger(__name__)
RETRY = timedelta(minutes=1)


class CertificateKeeper:
    """Decides when to renew the node certificate in `data_dir` and keeps the renewed one."""

    def __init__(
        self, data_dir: Path, *, clock: Callable[[], datetime], rng: random.Random | None = None
    ) -> None:
        self._cert_path, self._key_path, self._ca_path = identity_files(data_dir)
        self._clock = clock
        self._rng = rng or random.Random()
        self._fraction = self._rng.random()
        self._pending: ec.EllipticCurvePrivateKey | None = None
        self._requested_at: datetime | None = None
        self._not_before: datetime | None = None  # no request before then (after a refusal)
        self._forced = False  # the manager asked for a renewal now (a root rotation)
        self.renewals = 0

    def renew_at(self) -> datetime:
        identity = identity_of(read_secret(self._cert_path))
        # Certificates start CLOCK_SKEW before they were issued; the window counts from the issue.
        return renewal_time(identity.not_before + CLOCK_SKEW, identity.not_after, self._fraction)

    def due(self) -> bool:
        now = self._clock()
        if self._pending is not None and self._requested_at is not None and now - self._requested_at > RETRY:
            self._pending = None  # the answer was lost with its session: ask again
        if self._pending is not None or (self._not_before is not None and now < self._not_before):
            return False
        return self._forced or now >= self.renew_at()

    def renew_now(self) -> None:
        """Renew at the next chance, whatever the certificate's age (the manager asked for it)."""
        self._forced = True
        self._not_before = None

    def request(self) -> str:
        """A signing request for a new key (kept until the answer comes)."""
        self._pending = new_private_key()
        self._requested_at = self._clock()
        return make_csr(self._pending).decode()

    def accept(self, answer: CertificateIssued) -> bool:
        """Keep the renewed certificate; False (and a retry later) if there is none or it is unusable."""
        key, self._pending = self._pending, None
        if key is None:
            return False
        if answer.error or not answer.cert_pem:
            return self._later(f"the manager refused the renewal: {answer.error or 'no certificate'}")
        cert = answer.cert_pem.encode()
        roots = answer.ca_cert_pem.encode()
        try:
            # Trusted through the roots held now (mid-rotation: via the new root cross-signed by the old),
            # and through the roots sent along, which replace them.
            renewed = verify_issued(cert, read_secret(self._ca_path), self._clock())
            if roots:
                verify_issued(cert, roots, self._clock())
            current = identity_of(read_secret(self._cert_path))
        except CertificateError as error:
            return self._later(f"the renewed certificate is unusable: {error}")
        if (renewed.node_id, renewed.role) != (current.node_id, current.role):
            return self._later("the renewed certificate names another node or role")
        write_secret(self._key_path, key_pem(key))
        write_secret(self._cert_path, cert)
        if roots and roots != read_secret(self._ca_path):
            write_secret(self._ca_path, roots)
            log.info("the cluster's trusted roots changed (root CA rotation)")
        self._forced = False
        self._fraction = self._rng.random()
        self.renewals += 1
        log.info("certificate renewed: valid until %s", renewed.not_after.isoformat(timespec="seconds"))
        return True

    def lost(self) -> None:
        """The session ended with a request unanswered: ask again on the next one."""
        self._pending = None

    def _later(self, reason: str) -> bool:
        log.warning("%s; asking again in %s", reason, RETRY)
        self._not_before = self._clock() + RETRY
        return False
