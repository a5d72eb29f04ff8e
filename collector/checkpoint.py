"""Signed checkpoints: every so often the collector signs the head of every host's chain.

A checkpoint body is canonical JSON::

    {"v": 2, "created_us": ..., "prev": "<sha256 of the previous checkpoint>",
     "heads": {"host": [seq, "<hash hex>"], ...},
     "received": {"host": "<received digest hex>", ...}}

``received`` covers when the collector received each event, which the events' own
hashes do not: for every host whose head moved since the previous checkpoint, SHA-256
over, for each of its events after the previous head up to this one in seq order, the
seq (8 bytes, big-endian) and the receive time in µs (8 bytes, big-endian, signed).
(Version 1 checkpoints, before this, have no ``received``.)

Each checkpoint names the previous one, so checkpoints form a chain of their own, and
any event at or below a signed head can no longer be changed, removed or inserted
without ``audit verify`` noticing.

What the database alone cannot show is its newest checkpoints removed together with
the events after them. A *witness file* closes that gap: the collector appends every
checkpoint it signs to a file outside the database (``serve --witness FILE``; keep it
on other storage, append-only, or ship it to a log server), and ``audit verify
--witness FILE`` requires every witnessed checkpoint, and every head it names, to be
in the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.store.base import CheckpointRow

FIRST_PREV = "0" * 64


def received_digest(times: list[tuple[int, int]]) -> str:
    """The ``received`` digest of (seq, received_us) pairs, in seq order."""
    h = hashlib.sha256()
    for seq, received_us in times:
        h.update(seq.to_bytes(8, "big") + received_us.to_bytes(8, "big", signed=True))
    return h.hexdigest()


def make_body(
    created_us: int,
    prev: str,
    heads: dict[str, tuple[int, bytes]],
    received: dict[str, str] | None = None,
) -> bytes:
    """The canonical JSON a checkpoint signs."""
    doc = {
        "v": 2,
        "created_us": created_us,
        "prev": prev,
        "heads": {h: [s, x.hex()] for h, (s, x) in sorted(heads.items())},
        "received": dict(sorted((received or {}).items())),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def heads_of(row: CheckpointRow) -> dict[str, tuple[int, bytes]]:
    """The heads a stored checkpoint names (its signature not checked); {} when its
    body cannot be read (audit verify says why)."""
    try:
        doc = json.loads(row.body)
        return {h: (int(s), bytes.fromhex(x)) for h, (s, x) in doc["heads"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


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


class WitnessError(ValueError):
    """A witness file line that is not a checkpoint: line number and reason."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


def witness_line(row: CheckpointRow) -> bytes:
    """A checkpoint as one line of a witness file (JSON)."""
    doc = {
        "id": row.id,
        "created_us": row.created_us,
        "body": row.body.decode("ascii"),  # canonical JSON, ASCII by construction
        "signature": row.signature.hex(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def open_witness(path: Path) -> int:
    """The witness file opened for appending (made 0640 if new); OSError if it cannot be."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, 0o640)


def append_witness(path: Path, row: CheckpointRow) -> None:
    """Append ``row`` to the witness file and make it durable (OSError if it cannot)."""
    fd = open_witness(path)
    try:
        os.write(fd, witness_line(row))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_witness(path: Path) -> list[CheckpointRow]:
    """The checkpoints of a witness file, in order; WitnessError naming a bad line.

    A last line without its newline (a write cut short by a crash) is not a checkpoint
    the collector finished witnessing, and is left out.
    """
    text = path.read_bytes()
    lines = text.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn tail
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            rows.append(
                CheckpointRow(
                    int(doc["id"]),
                    int(doc["created_us"]),
                    str(doc["body"]).encode("ascii"),
                    bytes.fromhex(str(doc["signature"])),
                )
            )
        # ValueError includes UnicodeEncodeError (a body that is not ASCII); OverflowError:
        # an id of 1e999; RecursionError: JSON nested too deeply to parse
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            raise WitnessError(path, number, f"not a witnessed checkpoint ({e})") from None
    return rows
