"""The cluster's certificate authority and node certificates (X.509, ECDSA P-256), as SwarmKit has them.

A node certificate's subject says who holds it: the common name is the node id, the organizational
unit its role (`worker` or `manager`), the organization the cluster id; the root CA's subject names
the cluster. A joining node makes its own key and sends only a certificate signing request; the CA
ignores the names in the request and writes the subject from what the manager decided. Certificates
start five minutes in the past so that a node whose clock is a little behind accepts them at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import tempfile
from datetime import datetime, timedelta
from typing import Any

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_LIFETIME = timedelta(days=20 * 365)
DEFAULT_NODE_LIFETIME = timedelta(days=90)
CLOCK_SKEW = timedelta(minutes=5)
# What a root (and a cross-signed root) may do: sign certificates and revocation lists.
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


class CertificateError(Exception):
    """A certificate, key or request is unusable; the message says why and what to do."""


class NodeIdentity(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    role: str
    cluster_id: str
    not_before: datetime
    not_after: datetime
    serial: int


class KeyPair(msgspec.Struct, frozen=True, kw_only=True):
    cert_pem: bytes
    key_pem: bytes


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_sha256(cert_pem: bytes) -> bytes:
    """The SHA-256 of a certificate's DER: what a join token pins."""
    return hashlib.sha256(_load_cert(cert_pem).public_bytes(serialization.Encoding.DER)).digest()


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate: {error}") from None


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _name(cluster_id: str, common_name: str, unit: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)]
    if unit is not None:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    parts.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(parts)


class ClusterCA:
    """A root certificate and its key: signs node certificates."""

    def __init__(self, cert_pem: bytes, key_pem_bytes: bytes) -> None:
        self.cert_pem = cert_pem
        self._cert = _load_cert(cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem_bytes, password=None)
        except (ValueError, TypeError) as error:
            raise CertificateError(f"the CA key is not an unencrypted PEM private key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CertificateError("the CA key must be an ECDSA or RSA key")
        if _public_der(key.public_key()) != _public_der(self._cert.public_key()):
            raise CertificateError("the CA key does not belong to the CA certificate: give the matching pair")
        constraints = self._cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise CertificateError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
        self._key = key
        self.key_pem = key_pem_bytes

    @classmethod
    def create(cls, cluster_id: str, now: datetime, lifetime: timedelta = ROOT_LIFETIME) -> ClusterCA:
        """A new self-signed root for `cluster_id`."""
        key = new_private_key()
        name = _name(cluster_id, f"treeherd root CA {cluster_id}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))

    def cross_sign(self, new_root_pem: bytes, now: datetime) -> bytes:
        """The new root's certificate signed by this (old) root: an intermediate that lets nodes
        trusting only this root accept certificates issued under the new one during a rotation."""
        new_root = _load_cert(new_root_pem)
        cert = (
            x509.CertificateBuilder()
            .subject_name(new_root.subject)
            .issuer_name(self._cert.subject)
            .public_key(new_root.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(new_root.not_valid_after_utc, self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(new_root.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def digest(self) -> bytes:
        return cert_sha256(self.cert_pem)

    @property
    def cluster_id(self) -> str:
        """The organization the root names (the cluster's id), or "treeherd" for an external CA without one."""
        names = self._cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(names[0].value) if names else "treeherd"

    def issue(
        self,
        csr_pem: bytes,
        *,
        node_id: str,
        role: str,
        cluster_id: str,
        now: datetime,
        lifetime: timedelta = DEFAULT_NODE_LIFETIME,
        addresses: tuple[str, ...] = (),
    ) -> bytes:
        """A certificate for the key in `csr_pem`, naming `node_id` and `role` (the request's own
        names are ignored). `addresses` (IPs or DNS names) are added for a manager's server side."""
        request = _load_csr(csr_pem)
        if not request.is_signature_valid:
            raise CertificateError("the certificate signing request's signature is not valid")
        public = request.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise CertificateError("node keys must be ECDSA P-256")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cluster_id, node_id, role))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + lifetime, self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        names = _subject_alt_names(addresses)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _subject_alt_names(addresses: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            names.append(x509.DNSName(address))
    return names


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate signing request: {error}") from None


def csr_key_sha256(csr_pem: bytes) -> str:
    """The SHA-256 (hex) of a signing request's public key (its SubjectPublicKeyInfo)."""
    request = _load_csr(csr_pem)
    spki = request.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "treeherd node") -> bytes:
    """A signing request for `key`; the CA writes the real subject."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def identity_of(cert_pem: bytes) -> NodeIdentity:
    """Who a node certificate names (its subject's CN, OU and O) and when it is valid."""
    cert = _load_cert(cert_pem)
    return _identity(cert)


def _identity(cert: x509.Certificate) -> NodeIdentity:
    def one(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return NodeIdentity(
        node_id=one(NameOID.COMMON_NAME),
        role=one(NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=one(NameOID.ORGANIZATION_NAME),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def identity_of_der(cert_der: bytes) -> NodeIdentity:
    """As `identity_of`, for the DER form a TLS connection hands over (`getpeercert(binary_form=True)`)."""
    return _identity(x509.load_der_x509_certificate(cert_der))


def _load_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate: {error}") from None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issued_by_roots(cert_der: bytes, roots_pem: bytes) -> bool:
    """Whether the certificate (DER, as a TLS connection hands it over) was signed by one of the roots."""
    cert = x509.load_der_x509_certificate(cert_der)
    return any(_issued_by(cert, root) for root in _load_certs(roots_pem))


def verify_issued(cert_pem: bytes, ca_cert_pem: bytes, now: datetime) -> NodeIdentity:
    """Check that `cert_pem` was signed by the CA and is valid at `now`; its identity if so.

    `ca_cert_pem` may be a bundle of roots (during a root rotation: the old and the new), and
    `cert_pem` may carry, after the node certificate, an intermediate (the new root cross-signed by
    the old one): the certificate is accepted when issued by a trusted root directly or through it."""
    chain = _load_certs(cert_pem)
    roots = _load_certs(ca_cert_pem)
    cert, intermediates = chain[0], chain[1:]
    trusted = any(_issued_by(cert, root) for root in roots) or any(
        _issued_by(cert, middle)
        and any(_issued_by(middle, root) for root in roots)
        and middle.not_valid_before_utc <= now <= middle.not_valid_after_utc
        for middle in intermediates
    )
    if not trusted:
        raise CertificateError("the certificate was not issued by this cluster's CA")
    identity = _identity(cert)
    if not identity.not_before <= now <= identity.not_after:
        raise CertificateError(
            f"the certificate is not valid now (valid until {identity.not_after:%Y-%m-%d %H:%M} UTC)"
        )
    return identity


def server_context(ca_cert_pem: bytes, pair: KeyPair, *, require_client_cert: bool) -> ssl.SSLContext:
    """TLS for a manager's listener: its certificate, and client certificates of the cluster's CA
    required (the agent channel) or optional (the API, where a bearer token may stand in)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, pair)
    context.load_verify_locations(cadata=ca_cert_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(ca_cert_pem: bytes, pair: KeyPair | None = None) -> ssl.SSLContext:
    """TLS for a node or the CLI: trust only the cluster's CA; present `pair` when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_cert_pem.decode())
    if pair is not None:
        _load_pair(context, pair)
    return context


def _load_pair(context: ssl.SSLContext, pair: KeyPair) -> None:
    # ssl reads certificates and keys from files only; a memory file keeps keys off the disk.
    with tempfile.TemporaryDirectory(
        prefix="treeherd-tls-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as directory:
        os.chmod(directory, 0o700)
        path = os.path.join(directory, "pair.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pair.cert_pem + pair.key_pem)
        context.load_cert_chain(path)
