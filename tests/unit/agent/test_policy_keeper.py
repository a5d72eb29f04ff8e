"""Signed bundles are applied only when they verify and load; the last good stays."""

from __future__ import annotations

from pathlib import Path

import pytest
from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.errors import AgentError
from agent.identity import Identity
from agent.policy import PolicyKeeper, signed_bytes

KEY = ed25519.Ed25519PrivateKey.generate()


def _identity() -> Identity:
    pub = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Identity("ws-01", "127.0.0.1:1", b"", b"", b"", pub)


def _bundle(
    version: str, files: dict[str, bytes], key: ed25519.Ed25519PrivateKey = KEY
) -> collector_pb2.PolicyBundle:
    b = collector_pb2.PolicyBundle(version=version, files=files, author="secadmin")
    b.signature = key.sign(signed_bytes(b))
    return b


class Applied:
    """A loader that refuses a policy.csv saying 'bad'."""

    def __init__(self) -> None:
        self.loaded: list[bytes] = []

    def __call__(self, directory: Path) -> None:
        data = (directory / "policy.csv").read_bytes()
        if b"bad" in data:
            raise AgentError("policy.csv:1: bad rule")
        self.loaded.append(data)


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[PolicyKeeper, Applied, list[events_pb2.Event]]:
    applied, events = Applied(), []
    return PolicyKeeper(tmp_path, _identity(), applied, events.append), applied, events


def test_good_bundle_is_applied_and_kept(keeper, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    k, applied, events = keeper
    assert k.offer(_bundle("v1", {"policy.csv": b"p, a, b, read, allow\n"}))
    assert k.version == "v1"
    assert (tmp_path / "policy" / "policy.csv").read_bytes() == b"p, a, b, read, allow\n"
    assert events[-1].policy_applied.ok and events[-1].policy_applied.version == "v1"
    again = PolicyKeeper(tmp_path, _identity(), applied, events.append)
    again.load_last_good()
    assert again.version == "v1" and len(applied.loaded) == 2


@pytest.mark.parametrize(
    ("bundle", "error"),
    [
        (_bundle("v2", {"policy.csv": b"bad"}), "policy.csv:1: bad rule"),
        (
            _bundle("v2", {"policy.csv": b"ok"}, ed25519.Ed25519PrivateKey.generate()),
            "signature does not verify",
        ),
        (_bundle("v2", {"../escape": b"ok"}), "unsafe file names"),
    ],
    ids=["does not load", "forged signature", "path escape"],
)
def test_bad_bundle_is_refused_and_last_good_stays(
    keeper,
    tmp_path: Path,
    bundle: collector_pb2.PolicyBundle,
    error: str,  # type: ignore[no-untyped-def]
) -> None:
    k, _, events = keeper
    k.offer(_bundle("v1", {"policy.csv": b"good"}))
    assert not k.offer(bundle)
    assert k.version == "v1"
    assert (tmp_path / "policy" / "policy.csv").read_bytes() == b"good"
    assert not (tmp_path / "escape").exists()
    refused = events[-1].policy_applied
    assert not refused.ok and error in refused.error and refused.version == "v2"
    assert events[-1].severity == events_pb2.SEVERITY_HIGH
