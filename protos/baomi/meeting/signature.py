"""The host signature of a ``MeetingCheck``: what it covers, how it is made and checked.

The agent signs each check with its host key (ECDSA P-256, SHA-256); the collector
checks it on arrival against the certificate the host streams with. Kept apart from
:mod:`agent.meeting.check` so the collector can verify without loading the checks.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import load_pem_x509_certificate

from baomi.v1 import events_pb2


def signed_bytes(check: events_pb2.MeetingCheck) -> bytes:
    """What the signature covers: the deterministic serialization, signature empty."""
    unsigned = events_pb2.MeetingCheck()
    unsigned.CopyFrom(check)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


def sign_meeting_check(check: events_pb2.MeetingCheck, key_pem: bytes) -> None:
    """Sign ``check`` in place with the host's ECDSA P-256 key."""
    key = load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the host key is not an EC key")
    check.signature = key.sign(signed_bytes(check), ec.ECDSA(hashes.SHA256()))


def signature_problem(check: events_pb2.MeetingCheck, cert_pem: bytes) -> str | None:
    """Why ``check`` is not signed by the key of the host certificate ``cert_pem``
    (``no signature`` or ``signature does not verify``); None when it is."""
    if not check.signature:
        return "no signature"
    public = load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return "the host certificate's key is not an EC key"
    try:
        public.verify(check.signature, signed_bytes(check), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not verify"
    return None


def verify_meeting_check(check: events_pb2.MeetingCheck, cert_pem: bytes) -> bool:
    """Whether ``check`` was signed by the key of the host certificate ``cert_pem``."""
    return signature_problem(check, cert_pem) is None
