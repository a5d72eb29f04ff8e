"""Signed checkpoints: every so often the collector signs the head of every host's chain.

A checkpoint body is canonical JSON::

    {"v": 1, "created_us": ..., "prev": "<sha256 of the previous checkpoint>",
     "heads": {"host": [seq, "<hash hex>"], ...}}

Each checkpoint names the previous one, so checkpoints form a chain of their own, and
any event at or below a signed head can no longer be changed, removed or inserted
without ``audit verify`` noticing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.store.base import CheckpointRow

FIRST_PREV = "0" * 64


def make_body(created_us: int, prev: str, heads: dict[str, tuple[int, bytes]]) -> bytes:
    """The canonical JSON a checkpoint signs."""
    doc = {
        "v": 1,
        "created_us": created_us,
        "prev": prev,
        "heads": {h: [s, x.hex()] for h, (s, x) in sorted(heads.items())},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def digest(row: CheckpointRow) -> str:
    """What the next checkpoint names as ``prev``: SHA-256 over body and signature."""
    return hashlib.sha256(row.body + row.signature).hexdigest()


def sign(key: ed25519.Ed25519PrivateKey, body: bytes) -> bytes:
    """Ed25519 signature over the body."""
    return key.sign(body)


def parse_verified(row: CheckpointRow, key: ed25519.Ed25519PublicKey) -> dict[str, Any] | None:
    """The checkpoint's content if its signature verifies, else None."""
    try:
        key.verify(row.signature, row.body)
    except InvalidSignature:
        return None
    doc: dict[str, Any] = json.loads(row.body)
    return doc
