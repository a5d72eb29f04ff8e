"""The collector's Ed25519 signing key (received at enrolment), which signs policy
bundles, label orders and destruction orders.

The key's form is checked when the agent starts, without cryptography: its Rust
extension and OpenSSL bindings cost a connected agent about 8 MB resident, and it needs
them only when a signed bundle or order arrives, which is rare. They are imported at the
first verification.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from agent.errors import AgentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_PEM_HEAD, _PEM_FOOT = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"
# RFC 8410: an Ed25519 SubjectPublicKeyInfo is these 12 bytes (SEQUENCE, AlgorithmIdentifier
# id-Ed25519, BIT STRING of 33 bytes) then the 32-byte key; DER allows no other encoding.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_ED25519_KEY_BYTES = 32
_NOT_ED25519 = "the collector's signing key is not Ed25519; re-enrol"


class SigningKey:
    """The collector's Ed25519 public key; AgentError at once if ``pem`` is not one."""

    def __init__(self, pem: bytes) -> None:
        self.raw = _ed25519_from_pem(pem)
        self._key: Ed25519PublicKey | None = None

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is the collector's over ``data``."""
        # Here, not at the top: see the module docstring.
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )

        if self._key is None:
            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _ed25519_from_pem(pem: bytes) -> bytes:
    """The 32 key bytes of a PEM ``PUBLIC KEY`` holding an Ed25519 key."""
    text = pem.strip()
    if not (text.startswith(_PEM_HEAD) and text.endswith(_PEM_FOOT)):
        raise AgentError(_NOT_ED25519)
    body = b"".join(text[len(_PEM_HEAD) : -len(_PEM_FOOT)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error as e:
        raise AgentError(_NOT_ED25519) from e
    if len(der) != len(_ED25519_SPKI_PREFIX) + _ED25519_KEY_BYTES or not der.startswith(
        _ED25519_SPKI_PREFIX
    ):
        raise AgentError(_NOT_ED25519)
    return der[len(_ED25519_SPKI_PREFIX) :]
