"""Policy distribution: the current signed bundle and the agents watching for it.

This holds one current bundle built from a policy directory; the console (a later
issue) adds versioned editing on top of ``publish``.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from baomi.v1 import collector_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519

MAX_POLICY_FILE_BYTES = 1024 * 1024  # bytes per policy file


def bundle_digest(files: dict[str, bytes]) -> str:
    """A version name derived from content: the first 16 hex of SHA-256 over the files."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def signed_bytes(bundle: collector_pb2.PolicyBundle) -> bytes:
    """What a bundle's signature covers: the bundle with an empty signature."""
    unsigned = collector_pb2.PolicyBundle()
    unsigned.CopyFrom(bundle)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


class PolicyService:
    """The current bundle, and a way for agents to wait for the next one."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self._changed = asyncio.Condition()
        self.current: collector_pb2.PolicyBundle | None = None

    def load_directory(self, directory: Path, author: str = "collector") -> None:
        """Publish every regular file directly in ``directory`` as the current bundle."""
        files = {
            p.name: p.read_bytes()
            for p in sorted(directory.iterdir())
            if p.is_file() and p.stat().st_size <= MAX_POLICY_FILE_BYTES
        }
        self._set(files, author)

    async def publish(self, files: dict[str, bytes], author: str) -> collector_pb2.PolicyBundle:
        """Make ``files`` the current bundle and wake every watching agent."""
        bundle = self._set(files, author)
        async with self._changed:
            self._changed.notify_all()
        return bundle

    def _set(self, files: dict[str, bytes], author: str) -> collector_pb2.PolicyBundle:
        bundle = collector_pb2.PolicyBundle(
            version=bundle_digest(files), files=files, author=author
        )
        bundle.signature = self._key.sign(signed_bytes(bundle))
        self.current = bundle
        return bundle

    async def next_after(self, version: str) -> collector_pb2.PolicyBundle:
        """Wait until the current bundle differs from ``version`` and return it."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.current is not None and self.current.version != version
            )
            return self.current  # type: ignore[return-value]  # wait_for saw it set
