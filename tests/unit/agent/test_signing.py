"""The collector's signing key: checked as Ed25519 at start without cryptography, which is
imported only when a signature is verified (a connected agent's start does not load it)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import AgentError
from agent.signing import SigningKey
from tests.procs import fresh_python

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def test_the_collectors_key_verifies_its_signatures_and_nothing_else() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    key = SigningKey(private.public_key().public_bytes(PEM, SPKI))
    assert key.raw == private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signature = private.sign(b"bundle")
    assert key.verifies(signature, b"bundle")
    assert not key.verifies(signature, b"bundle, altered")
    assert not key.verifies(ed25519.Ed25519PrivateKey.generate().sign(b"bundle"), b"bundle")
    assert not key.verifies(b"short", b"bundle")


def test_a_pem_with_crlf_line_ends_is_the_same_key() -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(PEM, SPKI)
    assert SigningKey(pem.replace(b"\n", b"\r\n")).raw == SigningKey(pem).raw


@pytest.mark.parametrize(
    "pem",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(PEM, SPKI),
        b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",  # cut short
        b"",
    ],
    ids=["p256", "garbage", "truncated", "empty"],
)
def test_a_key_that_is_not_ed25519_is_refused_at_once_with_the_fix(pem: bytes) -> None:
    with pytest.raises(AgentError, match="not Ed25519; re-enrol"):
        SigningKey(pem)


def test_a_connected_agents_run_path_does_not_import_cryptography() -> None:
    """What ``baomi-agent run`` imports (with the file guard) and the key check at its
    start leave cryptography (~8 MB resident) out until a signature is verified."""
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(PEM, SPKI)
    probe = (
        "import sys\n"
        "import agent.cli, agent.core, agent.sensors.files.sensor\n"
        "from agent.signing import SigningKey\n"
        f"key = SigningKey({public!r})\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'cryptography'))\n"
        "key.verifies(b'x' * 64, b'data')\n"
        "print('cryptography' in sys.modules)\n"
    )
    out = fresh_python(probe)
    assert out.split("\n")[:2] == ["[]", "True"], out
