"""audit verify over a real SQLite store: damage is reported, never raised."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from collector import audit
from collector.ingest import COLLECTOR_HOST
from collector.store.base import EventRow
from collector.store.sqlite import SQLiteStore


def test_a_collector_alert_that_does_not_parse_is_reported_as_altered(tmp_path: Path) -> None:
    """Found by fuzzing (fuzz/targets.py, chain): a row of the collector's own chain
    whose kind column says tamper but whose body does not parse made audit verify fail
    with a DecodeError while it looked for recorded chain breaks."""
    store = SQLiteStore(tmp_path / "c.db")
    body = b"\xff\xff not an event"
    digest = hashlib.sha256(body).digest()
    store.append([EventRow(COLLECTOR_HOST, 1, "tamper", 4, 0, 0, digest, body)])
    report = audit.verify(store, ed25519.Ed25519PrivateKey.generate().public_key(), now_us=1)
    assert [(d.host_id, d.seq, d.kind) for d in report.damage] == [(COLLECTOR_HOST, 1, "altered")]
    assert "does not parse" in report.damage[0].detail
