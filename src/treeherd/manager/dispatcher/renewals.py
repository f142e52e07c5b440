"""Certificate renewals on the agent channel: a session opened with a node certificate may ask for a
new one (for a new key) without leaving its session; the certificate names the same node and role."""

from __future__ import annotations

import logging
from collections.abc import Callable

from treeherd.manager.dispatcher.sessions import AgentSession
from treeherd.model.wire import CertificateIssued, CertificateRenewal

log = logging.getLogger(__name__)

# Signs a request for (node id, role): the certificate's PEM (with its chain) and the roots to trust
# from now on, or raises with the reason.
Signer = Callable[[bytes, str, str], tuple[bytes, bytes]]


def renew(session: AgentSession, message: CertificateRenewal, sign: Signer | None) -> CertificateIssued:
    """The answer to one renewal request."""
    if session.identity is None:
        return CertificateIssued(error="this session was not opened with a node certificate: join first")
    if sign is None:
        return CertificateIssued(error="this manager issues no certificates")
    node_id, role = session.identity
    try:
        cert, roots = sign(message.csr_pem.encode(), node_id, role)
    except Exception as error:
        log.warning("renewal for %s (%s) refused: %s", session.hostname, node_id, error)
        return CertificateIssued(error=str(error))
    log.info("renewed the certificate of %s (%s)", session.hostname, node_id)
    return CertificateIssued(cert_pem=cert.decode(), ca_cert_pem=roots.decode())
