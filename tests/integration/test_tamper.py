"""Tamper evidence: edits, deletions and insertions in the store are found by audit verify.

The attacker here has write access to the database and disables the append-only
triggers first, as a DBA or a thief with the file would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector import audit, checkpoint, pki
from collector.errors import CollectorError
from collector.ingest import to_row
from collector.store import Store
from tests.collector_harness import (
    Host,
    RunningCollector,
    batch,
    enroll_host,
    raw_sql,
    send_batches,
)

N = 100


@pytest.fixture
def recorded(collector: RunningCollector) -> RunningCollector:
    """A record of N events of one host, checkpointed, then the collector stopped."""
    host = enroll_host(collector, "ws-01")
    send_batches(host, collector.address, [batch(host.events(N // 2)), batch(host.events(N // 2))])
    collector.checkpoint()
    return collector


def _verify(running: RunningCollector) -> audit.AuditReport:
    key = pki.load_verify_key(running.pki_dir / "signing.pub")
    return audit.verify(running.store, key)


def _body(running: RunningCollector, seq: int) -> events_pb2.Event:
    row = next(r for r in running.store.chain("ws-01") if r.seq == seq)
    return events_pb2.Event.FromString(row.body)


def test_untouched_record_verifies(recorded: RunningCollector) -> None:
    report = _verify(recorded)
    assert report.ok, report.damage
    assert report.events == N
    assert report.checkpoints == 1


def _edit_body(running: RunningCollector, url: str) -> None:
    ev = _body(running, 50)
    ev.file_access.path = "/srv/secret/innocent.txt"
    raw_sql(
        url,
        "UPDATE events SET body = ? WHERE host_id = 'ws-01' AND seq = 50",
        chain.canonical_bytes(ev),
    )


def _edit_body_and_hash(running: RunningCollector, url: str) -> None:
    ev = _body(running, 50)
    ev.file_access.decision = events_pb2.DECISION_ALLOW
    ev.file_access.user = "someone-else"
    body = chain.canonical_bytes(ev)
    raw_sql(
        url,
        "UPDATE events SET body = ?, hash = ? WHERE host_id = 'ws-01' AND seq = 50",
        body,
        chain.bytes_hash(body),
    )


def _edit_column(running: RunningCollector, url: str) -> None:
    raw_sql(
        url, "UPDATE events SET severity = 1, kind = 'device' WHERE host_id = 'ws-01' AND seq = 50"
    )


def _delete_middle(running: RunningCollector, url: str) -> None:
    raw_sql(url, "DELETE FROM events WHERE host_id = 'ws-01' AND seq = 50")


def _delete_tail(running: RunningCollector, url: str) -> None:
    raw_sql(url, "DELETE FROM events WHERE host_id = 'ws-01' AND seq >= 98")


def _insert(
    running: RunningCollector,
    url: str,
    *,
    seq: int = N + 1,
    host: str = "ws-01",
    prev: bytes | None = None,
) -> None:
    ev = events_pb2.Event(
        host_id=host,
        seq=seq,
        severity=events_pb2.SEVERITY_INFO,
        prev_hash=prev if prev is not None else running.store.head("ws-01")[1],  # type: ignore[index]
        file_access=events_pb2.FileAccess(path="/srv/secret/alibi.docx", action="read"),
    )
    old = _body(running, 10)
    ev.time.CopyFrom(old.time)
    body = chain.canonical_bytes(ev)
    # Claimed to have arrived an hour before the checkpoint that does not name it.
    received = running.store.checkpoints()[-1].created_us - 3600 * 1_000_000
    event_us = old.time.seconds * 1_000_000 + old.time.nanos // 1000
    raw_sql(
        url,
        "INSERT INTO events VALUES (?,?,?,?,?,?,?,?)",
        host,
        seq,
        "file_access",
        1,
        event_us,
        received,
        chain.bytes_hash(body),
        body,
    )


def _edit_received(running: RunningCollector, url: str) -> None:
    """An earlier arrival claimed, as if the access were reported at once."""
    raw_sql(url, "UPDATE events SET received_at = received_at - 3600000000 WHERE seq = 50")


def _edit_checkpoint_time(running: RunningCollector, url: str) -> None:
    raw_sql(url, "UPDATE checkpoints SET created_at = created_at - 86400000000")


def _insert_other_host(running: RunningCollector, url: str) -> None:
    _insert(running, url, seq=1, host="ws-ghost", prev=chain.GENESIS)


CASES: list[tuple[str, Callable[[RunningCollector, str], None], int, str]] = [
    ("edit body", _edit_body, 50, "altered"),
    ("edit body and rewrite its hash", _edit_body_and_hash, 50, "altered"),
    ("edit indexed columns", _edit_column, 50, "altered"),
    ("delete a middle row", _delete_middle, 50, "deleted"),
    ("delete the newest rows", _delete_tail, N, "deleted"),
    ("insert a row after the head", _insert, N + 1, "inserted"),
    ("edit when an event was received", _edit_received, 1, "altered"),
    ("edit when a checkpoint was signed", _edit_checkpoint_time, 0, "checkpoint"),
    ("insert a row for a host that never sent it", _insert_other_host, 1, "inserted"),
]


@pytest.mark.parametrize(("what", "tamper", "seq", "kind"), CASES, ids=[c[0] for c in CASES])
def test_tampering_is_found(
    recorded: RunningCollector,
    store_url: str,
    what: str,
    tamper: Callable[[RunningCollector, str], None],
    seq: int,
    kind: str,
) -> None:
    tamper(recorded, store_url)
    report = _verify(recorded)
    assert not report.ok, what
    assert any(d.seq == seq and d.kind == kind for d in report.damage), report.damage


def test_cli_names_host_seq_and_damage(recorded: RunningCollector, store_url: str) -> None:
    cli = [
        sys.executable,
        "-m",
        "collector.cli",
        "audit",
        "verify",
        "--store",
        store_url,
        "--pki",
        str(recorded.pki_dir),
    ]
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK:")
    _edit_body(recorded, store_url)
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "DAMAGE host ws-01 seq 50: altered" in bad.stdout


def test_forged_checkpoint_is_found(recorded: RunningCollector, store_url: str) -> None:
    cp = recorded.store.checkpoints()[-1]
    raw_sql(
        store_url,
        "UPDATE checkpoints SET body = ? WHERE id = ?",
        cp.body.replace(b'"v":2', b'"v":2 '),
        cp.id,
    )
    report = _verify(recorded)
    assert any(d.kind == "checkpoint" for d in report.damage)


def test_a_recorded_break_is_damage_until_reviewed(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    first = host.events(3)
    host.head = b"\x02" * 32
    send_batches(host, collector.address, [batch(first), batch(host.events(2))])
    collector.checkpoint()
    report = _verify(collector)
    assert [(d.host_id, d.seq, d.kind) for d in report.damage] == [("ws-01", 4, "break")]
    assert report.recorded_breaks == [("ws-01", 4)]
    key = pki.load_verify_key(collector.pki_dir / "signing.pub")
    reviewed = audit.verify(collector.store, key, accepted=[("ws-01", 4)])
    assert reviewed.ok and reviewed.accepted_breaks == [("ws-01", 4)]


def test_cli_accepts_a_reviewed_break(collector: RunningCollector, store_url: str) -> None:
    host = enroll_host(collector, "ws-01")
    first = host.events(3)
    host.head = b"\x02" * 32
    send_batches(host, collector.address, [batch(first), batch(host.events(2))])
    collector.checkpoint()
    cli = [sys.executable, "-m", "collector.cli", "audit", "verify", "--store", store_url]
    cli += ["--pki", str(collector.pki_dir)]
    found = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert found.returncode == 1 and "DAMAGE host ws-01 seq 4: break" in found.stdout
    reviewed = subprocess.run(
        [*cli, "--accept-break", "ws-01:4"], capture_output=True, text=True, timeout=60, check=False
    )
    assert reviewed.returncode == 0, reviewed.stdout
    assert "seq 4: chain break recorded at ingest, accepted as reviewed" in reviewed.stdout
    wrong = subprocess.run(
        [*cli, "--accept-break", "ws-01"], capture_output=True, text=True, timeout=60, check=False
    )
    assert wrong.returncode == 2 and "give HOST:SEQ" in wrong.stderr


def test_events_no_checkpoint_covers_are_damage_once_signing_stopped(
    collector: RunningCollector,
) -> None:
    host = enroll_host(collector, "ws-01")
    send_batches(host, collector.address, [batch(host.events(3))])
    collector.checkpoint()
    send_batches(host, collector.address, [batch(host.events(2))])  # not signed yet
    key = pki.load_verify_key(collector.pki_dir / "signing.pub")
    assert audit.verify(collector.store, key).ok  # a running collector signs them soon
    later = time.time_ns() // 1000 + audit.UNCOVERED_GRACE_US + 1
    report = audit.verify(collector.store, key, now_us=later)
    assert [(d.seq, d.kind) for d in report.damage] == [(4, "uncovered")]
    assert "seq 4..5" in report.damage[0].detail


def test_a_host_never_enrolled_is_damage(collector: RunningCollector) -> None:
    ghost = Host("ws-ghost", b"", b"", b"")
    collector.store.append(
        [to_row(e, "file_access", time.time_ns() // 1000) for e in ghost.events(2)]
    )
    collector.checkpoint()
    report = _verify(collector)
    assert [(d.host_id, d.seq, d.kind) for d in report.damage] == [("ws-ghost", 1, "unknown_host")]


# --- the witness file: checkpoints kept outside the database ------------------------------
@pytest.fixture
def witnessed(
    store: Store, pki_dir: Path, tmp_path: Path
) -> Iterator[tuple[RunningCollector, Path]]:
    """A collector that also appends every checkpoint to a witness file; 3 checkpoints
    over N events of ws-01."""
    witness = tmp_path / "elsewhere" / "checkpoints.witness"
    witness.parent.mkdir()
    running = RunningCollector(store, pki_dir, checkpoint_seconds=3600, witness=witness)
    try:
        host = enroll_host(running, "ws-01")
        for _ in range(3):
            send_batches(host, running.address, [batch(host.events(N // 3))])
            running.checkpoint()
        yield running, witness
    finally:
        running.stop()


def _verify_with(running: RunningCollector, witness: Path) -> audit.AuditReport:
    key = pki.load_verify_key(running.pki_dir / "signing.pub")
    return audit.verify(running.store, key, witness=checkpoint.read_witness(witness))


def test_every_checkpoint_is_witnessed(witnessed: tuple[RunningCollector, Path]) -> None:
    running, witness = witnessed
    assert checkpoint.read_witness(witness) == running.store.checkpoints()
    report = _verify_with(running, witness)
    assert report.ok and report.witnessed == 3


def test_the_newest_checkpoints_removed_with_their_events_are_found(
    witnessed: tuple[RunningCollector, Path], store_url: str
) -> None:
    """What the store alone cannot show: the last checkpoint deleted together with the
    events it named. The store verifies; against the witness file it does not."""
    running, witness = witnessed
    last = running.store.checkpoints()[-1]
    first_cut = 2 * (N // 3) + 1
    raw_sql(store_url, "DELETE FROM events WHERE host_id = 'ws-01' AND seq >= ?", first_cut)
    raw_sql(store_url, "DELETE FROM checkpoints WHERE id = ?", last.id)
    assert _verify(running).ok  # the limit of the store alone
    report = _verify_with(running, witness)
    assert not report.ok
    details = [str(d) for d in report.damage]
    assert f"checkpoint: witnessed checkpoint {last.id} is not in the store" in details
    assert any(d.host_id == "ws-01" and d.kind == "deleted" for d in report.damage), details


def test_an_altered_witness_file_is_named(
    witnessed: tuple[RunningCollector, Path], store_url: str
) -> None:
    running, witness = witnessed
    lines = witness.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('\\"v\\":2', '\\"v\\":3')
    witness.write_text("".join(lines))
    report = _verify_with(running, witness)
    found = [d for d in report.damage if d.kind == "witness"]
    assert found and "signature does not verify" in found[0].detail
    witness.write_text("".join(lines[1:]) + "not json\n")
    cli = [
        sys.executable, "-m", "collector.cli", "audit", "verify", "--store", store_url,
        "--pki", str(running.pki_dir), "--witness", str(witness),
    ]  # fmt: skip
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{witness}:3: not a witnessed checkpoint" in done.stderr


def test_cli_verifies_against_the_witness_file(
    witnessed: tuple[RunningCollector, Path], store_url: str
) -> None:
    running, witness = witnessed
    cli = [
        sys.executable, "-m", "collector.cli", "audit", "verify", "--store", store_url,
        "--pki", str(running.pki_dir), "--witness", str(witness),
    ]  # fmt: skip
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 checkpoints (3 witnessed)" in ok.stdout
    raw_sql(store_url, "DELETE FROM checkpoints WHERE id = ?", running.store.checkpoints()[-1].id)
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert "is not in the store" in bad.stdout


def test_an_unwritable_witness_file_stops_the_collector_at_start(
    store: Store, pki_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(CollectorError, match="cannot append to the witness file"):
        RunningCollector(store, pki_dir, witness=tmp_path / "no-such-dir" / "w")
