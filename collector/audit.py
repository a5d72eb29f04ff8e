"""``audit verify``: recompute every chain and checkpoint and name any damage.

What is checked, and what it catches:
- each stored event's body re-hashes to its stored hash, and its indexed columns say
  what the body says (a changed row, in the body or in a column);
- each event's prev_hash is the hash of the event before it, seq runs without gaps from 1
  (a removed row; a changed row whose hash column was rewritten to match);
- every checkpoint's Ed25519 signature verifies, each names the one before it, heads
  never move backwards, and the newest checkpoint's heads are stored with those hashes
  (a rewritten or truncated chain);
- an event beyond the newest checkpoint that the collector received well before that
  checkpoint was signed cannot be genuine: the checkpoint would name it (an inserted row);
- events beyond the newest checkpoint while that checkpoint is older than ``grace`` by
  the verifier's clock are not covered by any signature and the collector is not
  signing (stopped uncleanly, or its key gone): they cannot be trusted (uncovered);
- a host with events that was never enrolled here (an inserted chain);
- the receive times of the events each checkpoint covers hash to the digest it signed,
  and its ``created_at`` column says what its body says (an edited ``received_at`` or
  checkpoint time);
- with a witness file (``checkpoint.read_witness``): every checkpoint in it verifies and
  is in the store unchanged, and the newest one's heads are stored with those hashes
  (the newest checkpoints removed together with the events after them).

Breaks that the collector itself saw and recorded at ingest (alerts of kind
``chain_break`` in its own chain) are damage too -- the chain the host sent has a hole
or a fork there -- unless an operator has reviewed them and names them as accepted
(``accepted``; ``audit verify --accept-break HOST:SEQ``), which the report lists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi import chain
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from collector import checkpoint
from collector.ingest import COLLECTOR_HOST
from collector.store.base import CheckpointRow, EventRow, Store

#: An event received this long before the newest checkpoint must be covered by it.
#: Allows for a batch that arrived, then waited for its commit while the checkpoint ran.
INSERT_MARGIN_US = 60 * 1_000_000
#: A running collector signs every few seconds: events beyond a checkpoint older than
#: this are not being covered.
UNCOVERED_GRACE_US = 120 * 1_000_000


@dataclass(frozen=True)
class Damage:
    """One thing in the record that does not add up."""

    host_id: str
    seq: int
    kind: str  # altered, deleted, inserted, uncovered, unknown_host, break, checkpoint, witness
    detail: str

    def __str__(self) -> str:
        if self.host_id == "-":  # the checkpoints or the witness file, not one host's chain
            return f"{self.kind}: {self.detail}"
        return f"host {self.host_id} seq {self.seq}: {self.kind}: {self.detail}"


@dataclass
class AuditReport:
    """What ``verify`` found."""

    hosts: int = 0
    events: int = 0
    checkpoints: int = 0
    witnessed: int = 0  # checkpoints of the witness file checked against the store
    damage: list[Damage] = field(default_factory=list)
    recorded_breaks: list[tuple[str, int]] = field(default_factory=list)
    accepted_breaks: list[tuple[str, int]] = field(default_factory=list)  # reviewed
    unanchored: int = 0  # events beyond the newest checkpoint

    @property
    def ok(self) -> bool:
        """True when nothing was altered, deleted or inserted."""
        return not self.damage


def _check_columns(row: EventRow, ev: events_pb2.Event) -> str | None:
    time_us = ev.time.seconds * 1_000_000 + ev.time.nanos // 1000
    mismatches = [
        name
        for name, column, body in (
            ("host_id", row.host_id, ev.host_id),
            ("seq", row.seq, ev.seq),
            ("kind", row.kind, ev.WhichOneof("kind")),
            ("severity", row.severity, ev.severity),
            ("event_time", row.event_time_us, time_us),
        )
        if column != body
    ]
    return f"column {', '.join(mismatches)} differs from the event body" if mismatches else None


#: Per host: (first seq, last seq, received digest, checkpoint id) a checkpoint signed.
Received = dict[str, list[tuple[int, int, str, int]]]


def _verify_checkpoints(
    store: Store, key: ed25519.Ed25519PublicKey, report: AuditReport, received: Received
) -> tuple[dict[str, tuple[int, bytes]], int]:
    """Check signatures and links; return the newest checkpoint's heads and time, and
    fill ``received`` with the receive-time digests the checkpoints signed."""
    prev = checkpoint.FIRST_PREV
    last_heads: dict[str, tuple[int, bytes]] = {}
    last_time = 0
    for row in store.checkpoints():
        report.checkpoints += 1
        doc: dict[str, Any] | None = checkpoint.parse_verified(row, key)
        if doc is None:
            report.damage.append(
                Damage("-", 0, "checkpoint", f"checkpoint {row.id}: signature does not verify")
            )
            prev = checkpoint.digest(row)
            continue
        if doc["prev"] != prev:
            report.damage.append(
                Damage(
                    "-",
                    0,
                    "checkpoint",
                    f"checkpoint {row.id} does not follow the one before it "
                    "(a checkpoint was removed or inserted)",
                )
            )
        heads = {h: (int(s), bytes.fromhex(x)) for h, (s, x) in doc["heads"].items()}
        if int(doc["created_us"]) != row.created_us:
            report.damage.append(
                Damage("-", 0, "checkpoint", f"checkpoint {row.id}: created_at was changed")
            )
        for host, digest_hex in doc.get("received", {}).items():
            before = last_heads.get(host, (0, b""))[0]
            if host in heads:
                received.setdefault(host, []).append(
                    (before + 1, heads[host][0], str(digest_hex), row.id)
                )
        for host, (seq, digest) in last_heads.items():
            now = heads.get(host)
            if now is None or now[0] < seq or (now[0] == seq and now[1] != digest):
                report.damage.append(
                    Damage(
                        host,
                        seq,
                        "checkpoint",
                        f"checkpoint {row.id} moves this host's head backwards",
                    )
                )
        prev = checkpoint.digest(row)
        last_heads, last_time = heads, int(doc["created_us"])
    return last_heads, last_time


def _recorded_breaks(store: Store) -> set[tuple[str, int]]:
    breaks: set[tuple[str, int]] = set()
    for row in store.chain(COLLECTOR_HOST):
        if row.kind != "tamper":
            continue
        try:
            ev = events_pb2.Event.FromString(row.body)
        except DecodeError:
            continue  # verifying the collector's own chain reports the row as altered
        if ev.tamper.kind == "chain_break":
            t = ev.tamper
            breaks.update((t.subject_host, seq) for seq in [t.subject_seq, *t.subject_seqs])
    return breaks


class _ReceivedTimes:
    """Recomputes, along one host's chain, the receive-time digests its checkpoints
    signed (checkpoint.received_digest), reporting each that differs."""

    def __init__(
        self, intervals: list[tuple[int, int, str, int]], report: Callable[[int, str], None]
    ) -> None:
        self._left = sorted(intervals)
        self._report = report
        self._times: list[tuple[int, int]] = []

    def add(self, seq: int, received_us: int) -> None:
        while self._left and seq > self._left[0][1]:
            self._close()
        if self._left and seq >= self._left[0][0]:
            self._times.append((seq, received_us))
            if seq == self._left[0][1]:
                self._close()

    def _close(self) -> None:
        first, last, signed, cid = self._left.pop(0)
        if checkpoint.received_digest(self._times) != signed:
            self._report(
                first,
                f"the receive times of seq {first}..{last} differ from those checkpoint {cid} "
                "signed (received_at was changed, or events removed)",
            )
        self._times = []

    def finish(self) -> None:
        while self._left:
            self._close()


def _verify_chain(
    store: Store,
    *,
    host: str,
    anchor: tuple[int, bytes] | None,
    anchor_time: int,
    breaks: set[tuple[str, int]],
    accepted: Collection[tuple[str, int]],
    stale: bool,
    old_us: int,
    received: list[tuple[int, int, str, int]],
    report: AuditReport,
) -> None:
    """One host's chain. ``stale``: the newest checkpoint is old (nothing is signing);
    with no checkpoint at all, events received before ``old_us`` count as stale."""

    def damage(seq: int, kind: str, detail: str) -> None:
        report.damage.append(Damage(host, seq, kind, detail))

    uncovered: list[int] = []
    times = _ReceivedTimes(received, lambda seq, detail: damage(seq, "altered", detail))
    expected_seq, prev_hash = 1, chain.GENESIS
    seen_anchor = anchor is None
    for row in store.chain(host):
        report.events += 1
        times.add(row.seq, row.received_us)
        recorded = (host, row.seq) in breaks
        if recorded:
            report.recorded_breaks.append((host, row.seq))
            if (host, row.seq) in accepted:
                report.accepted_breaks.append((host, row.seq))
            else:
                damage(
                    row.seq,
                    "break",
                    "the chain the host sent breaks here (recorded at ingest); review it, "
                    "then accept it with --accept-break",
                )
        if row.seq != expected_seq and not recorded:
            damage(
                expected_seq, "deleted", f"seq {expected_seq}..{row.seq - 1} missing from the chain"
            )
        try:
            ev = events_pb2.Event.FromString(row.body)
        except DecodeError:
            damage(row.seq, "altered", "the stored body does not parse")
            expected_seq, prev_hash = row.seq + 1, row.hash
            continue
        actual = chain.bytes_hash(row.body)
        if actual != row.hash:
            damage(row.seq, "altered", "the body does not match its stored hash")
        elif (problem := _check_columns(row, ev)) is not None:
            damage(row.seq, "altered", problem)
        elif ev.prev_hash != prev_hash and not recorded and row.seq == expected_seq:
            damage(
                row.seq - 1,
                "altered",
                f"the hash of seq {row.seq - 1} is not what seq {row.seq} names as prev_hash",
            )
        if anchor is not None and row.seq == anchor[0]:
            seen_anchor = True
            if actual != anchor[1]:
                damage(row.seq, "altered", "differs from the hash the newest checkpoint signed")
        if anchor is None or row.seq > anchor[0]:
            report.unanchored += 1
            if stale or (not anchor_time and row.received_us < old_us):
                uncovered.append(row.seq)
            if row.received_us < anchor_time - INSERT_MARGIN_US:
                damage(
                    row.seq,
                    "inserted",
                    "received before the newest checkpoint, which does not cover it",
                )
        expected_seq, prev_hash = row.seq + 1, actual
    times.finish()
    if uncovered:
        damage(
            uncovered[0],
            "uncovered",
            f"seq {uncovered[0]}..{uncovered[-1]} are covered by no checkpoint, and the "
            "collector has not signed one for a while (stopped uncleanly?): not trusted",
        )
    if not seen_anchor and anchor is not None:
        damage(
            anchor[0],
            "deleted",
            f"the newest checkpoint names seq {anchor[0]}, which is no longer stored",
        )


def _verify_witness(
    store: Store,
    key: ed25519.Ed25519PublicKey,
    witnessed: Sequence[CheckpointRow],
    report: AuditReport,
) -> None:
    """Every witnessed checkpoint stored unchanged; the newest one's heads stored."""
    stored = {row.id: row for row in store.checkpoints()}
    newest: dict[str, Any] | None = None
    newest_id = 0
    for row in witnessed:
        report.witnessed += 1
        doc = checkpoint.parse_verified(row, key)
        if doc is None:
            report.damage.append(
                Damage(
                    "-",
                    0,
                    "witness",
                    f"witnessed checkpoint {row.id}: signature does not verify "
                    "(the witness file was altered)",
                )
            )
            continue
        kept = stored.get(row.id)
        if kept is None or (kept.body, kept.signature) != (row.body, row.signature):
            where = "is not in the store" if kept is None else "differs in the store"
            report.damage.append(
                Damage("-", 0, "checkpoint", f"witnessed checkpoint {row.id} {where}")
            )
        newest, newest_id = doc, row.id
    if newest is None:
        return
    # Heads only grow, so the newest witnessed checkpoint covers every earlier one.
    for host, (seq, digest) in sorted(newest["heads"].items()):
        got = store.hashes(host, int(seq), int(seq)).get(int(seq))
        if got is None:
            report.damage.append(
                Damage(
                    host,
                    int(seq),
                    "deleted",
                    f"witnessed checkpoint {newest_id} names seq {seq}, which is not stored",
                )
            )
        elif got.hex() != digest:
            report.damage.append(
                Damage(
                    host,
                    int(seq),
                    "altered",
                    f"stored hash differs from witnessed checkpoint {newest_id}",
                )
            )


def verify_witnessed(
    store: Store, key: ed25519.Ed25519PublicKey, witness_path: Path | None
) -> AuditReport:
    """``verify`` against the witness file at ``witness_path`` (None: without one); a
    witness file that cannot be read is itself a problem of the report."""
    witness: list[CheckpointRow] = []
    unreadable = None
    if witness_path is not None:
        try:
            witness = checkpoint.read_witness(witness_path)
        except (OSError, checkpoint.WitnessError) as e:
            unreadable = Damage("-", 0, "witness", f"cannot read {witness_path}: {e}")
    report = verify(store, key, witness=witness)
    if unreadable is not None:
        report.damage.append(unreadable)
    return report


def verify(
    store: Store,
    key: ed25519.Ed25519PublicKey,
    progress: Callable[[str], None] | None = None,
    *,
    witness: Sequence[CheckpointRow] = (),
    accepted: Collection[tuple[str, int]] = (),
    now_us: int | None = None,
    grace_us: int = UNCOVERED_GRACE_US,
) -> AuditReport:
    """Verify every chain and checkpoint in ``store`` against the collector's key, and
    the store against the checkpoints of a witness file when one is given.
    ``accepted``: (host, seq) of breaks an operator reviewed. ``now_us``: the
    verifier's clock (events beyond a checkpoint older than ``grace_us`` are damage)."""
    report = AuditReport()
    received: Received = {}
    heads, anchor_time = _verify_checkpoints(store, key, report, received)
    if witness:
        _verify_witness(store, key, witness, report)
    now = time.time_ns() // 1000 if now_us is None else now_us
    breaks = _recorded_breaks(store)
    enrolled = set(store.decommissioned())
    hosts = sorted(set(store.hosts()) | set(heads))
    for host in hosts:
        if progress is not None:
            progress(host)
        report.hosts += 1
        if host != COLLECTOR_HOST and host not in enrolled and not store.host_certificates(host):
            first = next((r.seq for r in store.chain(host)), 0)
            report.damage.append(
                Damage(host, first, "unknown_host", "events of a host never enrolled here")
            )
        _verify_chain(
            store,
            host=host,
            anchor=heads.get(host),
            anchor_time=anchor_time,
            breaks=breaks,
            accepted=set(accepted),
            stale=bool(anchor_time) and anchor_time < now - grace_us,
            old_us=now - grace_us,
            received=received.get(host, []),
            report=report,
        )
    return report
