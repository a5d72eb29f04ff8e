"""The export file of an offline host: its chained events, signed by its host key.

An offline host (``baomi-agent run --offline``) carries its record to the collector on
a registered stick: ``baomi-agent export`` writes this file, ``baomi-collector import``
reads it. One JSON object::

    {"format": "baomi-export/1", "host_id": ..., "first_seq": F, "last_seq": L,
     "prev_hash": HEX (the hash before seq F), "head_hash": HEX (the hash of seq L),
     "created": ISO 8601, "certificate": PEM (the host's, issued by the collector),
     "events": BASE64 (an EventBatch: the events' bytes exactly as spooled and hashed),
     "signature": BASE64 (ECDSA-SHA256 by the host key over ``signed_bytes``)}

The events are the bytes the gRPC stream would carry (``chain.batch_of``), so the
collector hashes and stores them as it does a streamed batch. The signature covers
every other field, the events included; ``chain_problem`` names the seq a changed,
removed or reordered event breaks the chain at, before the signature is looked at.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from baomi import chain
from baomi.v1 import events_pb2

FORMAT = "baomi-export/1"
MAX_FILE_BYTES = 2 * 1024 * 1024 * 1024  # 2 GiB: read whole, so bounded
_T = TypeVar("_T")


class ExportFormatError(ValueError):
    """A file that is not a readable export (the message says what is wrong)."""


@dataclass(frozen=True, kw_only=True)
class ExportFile:
    """One export, as written and read."""

    host_id: str
    first_seq: int
    last_seq: int
    prev_hash: bytes
    head_hash: bytes
    created: str
    certificate: str  # PEM
    bodies: list[bytes]
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        """What the host key signs: every field but the signature, in one fixed form."""
        doc = self._document()
        del doc["signature"]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def _document(self) -> dict[str, object]:
        doc = asdict(self)
        del doc["bodies"]
        doc["format"] = FORMAT
        doc["prev_hash"] = self.prev_hash.hex()
        doc["head_hash"] = self.head_hash.hex()
        doc["events"] = base64.b64encode(chain.batch_of(self.bodies)).decode()
        doc["signature"] = base64.b64encode(self.signature).decode()
        return doc

    def dumps(self) -> bytes:
        """The file's bytes."""
        return json.dumps(self._document(), indent=1).encode() + b"\n"

    def signed(self, key: ec.EllipticCurvePrivateKey) -> ExportFile:
        """This export with the host key's signature."""
        signature = key.sign(self.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        return replace(self, signature=signature)

    def signature_ok(self, key: ec.EllipticCurvePublicKey) -> bool:
        """Whether ``key`` (the host's) signed this export as it is."""
        try:
            key.verify(self.signature, self.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def loads(raw: bytes) -> ExportFile:
    """Read an export; ExportFormatError saying what is wrong when it is not one."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFormatError(f"not an export of baomi-agent (not JSON: {e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExportFormatError(f"not an export of baomi-agent (format is not {FORMAT!r})")
    try:
        export = ExportFile(
            host_id=_typed(doc, "host_id", str),
            first_seq=_typed(doc, "first_seq", int),
            last_seq=_typed(doc, "last_seq", int),
            prev_hash=bytes.fromhex(_typed(doc, "prev_hash", str)),
            head_hash=bytes.fromhex(_typed(doc, "head_hash", str)),
            created=_typed(doc, "created", str),
            certificate=_typed(doc, "certificate", str),
            bodies=chain.batch_events(base64.b64decode(_typed(doc, "events", str), validate=True)),
            signature=base64.b64decode(_typed(doc, "signature", str), validate=True),
        )
    except (ValueError, binascii.Error) as e:  # hex, base64 and BatchError are ValueErrors
        raise ExportFormatError(f"the export is damaged: {e}") from e
    if not 0 < export.first_seq <= export.last_seq:
        raise ExportFormatError(
            f"the export names seq {export.first_seq}..{export.last_seq}, not a range of events"
        )
    return export


def _typed(doc: dict[str, object], key: str, kind: type[_T]) -> _T:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ExportFormatError(f"the export is damaged: {key} is missing or not a {kind.__name__}")
    return value


def chain_problem(export: ExportFile) -> tuple[int, str] | None:
    """The first seq at which the events do not form the chain the export names, and
    what is wrong there; None when they run unbroken from ``prev_hash`` to ``head_hash``."""
    expected, prev = export.first_seq, export.prev_hash
    seqs = set()
    for body in export.bodies:
        with contextlib.suppress(DecodeError):
            seqs.add(events_pb2.Event.FromString(body).seq)
    for body in export.bodies:
        if (problem := _link_problem(export, body, expected, prev, seqs)) is not None:
            return problem
        expected, prev = expected + 1, chain.bytes_hash(body)
    if expected <= export.last_seq:
        return expected, f"seq {expected}..{export.last_seq} are missing from the end"
    if prev != export.head_hash:
        last = export.last_seq
        return last, f"seq {last} was changed (its hash is not the head the host signed)"
    return None


def _link_problem(  # noqa: PLR0911 - one return per way a link breaks
    export: ExportFile, body: bytes, expected: int, prev: bytes, seqs: set[int]
) -> tuple[int, str] | None:
    """What is wrong with ``body`` as the event at seq ``expected`` after hash ``prev``
    (``seqs``: every seq the export's events name)."""
    try:
        event = events_pb2.Event.FromString(body)
    except DecodeError:
        return expected, f"seq {expected}: the event does not parse"
    if event.host_id != export.host_id:
        return event.seq, f"seq {event.seq}: the event names host {event.host_id!r}"
    if event.seq > expected:
        if expected in seqs:
            return expected, f"seq {expected} is out of order (seq {event.seq} comes before it)"
        return expected, f"seq {expected} is missing (the next event is seq {event.seq})"
    if event.seq == expected - 1:
        return event.seq, f"seq {event.seq} comes twice"
    if event.seq < expected:
        return event.seq, f"seq {event.seq} is out of order (it follows seq {expected - 1})"
    if event.prev_hash == prev:
        return None
    if expected == export.first_seq:
        return expected, f"seq {expected}: prev_hash is not the export's start"
    return expected - 1, f"seq {expected - 1} was changed (seq {expected} names another before it)"
