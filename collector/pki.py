"""The collector's certificate authority: agent certificates, server certificate, signing key.

Layout of a PKI directory (keys are 0600):
    ca.pem, ca.key          issues every certificate; agents trust only this CA
    server.pem, server.key  the collector's TLS identity
    signing.key             Ed25519 key for chain checkpoints and policy bundles
    signing.pub             its public half, for ``audit verify`` and agents
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.errors import ConfigError, EnrollmentError

HOST_ID = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
AGENT_CERT_DAYS = 365
CA_DAYS = 3650


def check_host_id(host_id: str) -> str:
    """Return ``host_id`` if it is a valid host name, else raise with what is allowed."""
    if not HOST_ID.fullmatch(host_id):
        raise ConfigError(
            f"invalid host id {host_id!r}: use 1-63 lowercase letters, digits, '.' or '-', "
            "starting with a letter or digit"
        )
    return host_id


@dataclass(frozen=True)
class Authority:
    """A loaded CA plus the collector's signing key."""

    directory: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def signing_public_pem(self) -> bytes:
        """The signing key's public half, PEM."""
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def issue_host_certificate(self, csr_pem: bytes, host_id: str) -> bytes:
        """Sign an agent's CSR; the certificate names ``host_id`` whatever the CSR says."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise EnrollmentError(f"the certificate request is not a PEM CSR: {e}") from e
        if not csr.is_signature_valid:
            raise EnrollmentError("the certificate request's signature does not verify")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise EnrollmentError("the certificate request must carry an EC or Ed25519 key")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=AGENT_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_id)]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 over the DER certificate."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_authority(directory: Path, server_names: list[str]) -> Authority:
    """Create a new CA, server certificate and signing key in ``directory``.

    Refuses to overwrite an existing CA: that would orphan every enrolled agent.
    """
    if (directory / "ca.key").exists():
        raise ConfigError(f"{directory} already holds a CA; remove it first to start over")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Baomi collector CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signing_key = ed25519.Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    _write(directory / "ca.key", _key_pem(ca_key), secret=True)
    _write(directory / "ca.pem", ca_cert.public_bytes(pem), secret=False)
    _write(directory / "server.key", _key_pem(server_key), secret=True)
    _write(directory / "server.pem", server_cert.public_bytes(pem), secret=False)
    _write(directory / "signing.key", _key_pem(signing_key), secret=True)
    _write(
        directory / "signing.pub",
        signing_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
        secret=False,
    )
    return load_authority(directory)


def load_authority(directory: Path) -> Authority:
    """Load the CA and signing key from ``directory``."""
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        signing_key = serialization.load_pem_private_key(
            (directory / "signing.key").read_bytes(), None
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the PKI in {directory}: {e}; create one with "
            f"'baomi-collector pki init --dir {directory}'"
        ) from e
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not isinstance(
        signing_key, ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(f"unexpected key types in {directory}")
    return Authority(directory, ca_cert, ca_key, signing_key)


def load_verify_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Load the collector's Ed25519 public key (``signing.pub``)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load the signing public key {path}: {e}") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key
