"""Meeting checks' host signatures, checked on arrival, and the status the console shows.

A room agent signs each ``MeetingCheck`` with its host key. Ingest checks the signature
against the certificate the host streams with (the one its mTLS peer presented) before
the batch is stored; a check with no signature, or one that does not verify, is
alerted as ``meeting_signature`` (HIGH) naming the host and every such seq, durably and
before the check itself is stored -- so a stored check no alert names was verified on
arrival. The alert is sent at once, not gathered over a minute like chain breaks: the
console must never show a tampered check as valid while an alert waits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from baomi.meeting.signature import signature_problem
from baomi.v1 import events_pb2

from collector.store.base import ConsoleQuery, EventRow, Store

if TYPE_CHECKING:
    from collector.ingest import CollectorChain

_logger = logging.getLogger(__name__)

ALERT_KIND = "meeting_signature"
LOOKUP_ALERTS = 5000  # signature alerts the console reads for one meetings page
VALID = "valid"  # verified on arrival against the host certificate


def peer_certificate(context: grpc.aio.ServicerContext) -> bytes | None:
    """The PEM certificate the host authenticated this stream with (one, or None)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return pems[0] if len(pems) == 1 else None


def problems(
    events: Iterable[events_pb2.Event], new_seqs: set[int], cert_pem: bytes | None
) -> list[tuple[int, str]]:
    """(seq, why) of each new meeting check whose signature is missing or wrong."""
    found = []
    for ev in events:
        if ev.seq not in new_seqs or not ev.HasField("meeting_check"):
            continue
        if cert_pem is None:
            why: str | None = "no host certificate to verify the signature with"
        else:
            why = signature_problem(ev.meeting_check, cert_pem)
        if why is not None:
            m = ev.meeting_check
            found.append((ev.seq, f"meeting check of room {m.room} meeting {m.meeting}: {why}"))
    return found


async def check_arrivals(
    alerts: CollectorChain,
    host_id: str,
    events: list[events_pb2.Event],
    rows: list[EventRow],
    context: grpc.aio.ServicerContext,
) -> None:
    """Alert, before they are stored, the meeting checks of a batch (its new ``rows``)
    whose signature the host's certificate does not verify."""
    new = {r.seq for r in rows if r.kind == "meeting_check"}
    if not new:
        return
    found = problems(events, new, peer_certificate(context))
    if not found:
        return
    seqs = [seq for seq, _ in found]
    detail = f"host {host_id} seq {seqs[0]}: {found[0][1]}"
    if len(found) > 1:
        detail += f"; also seq {', '.join(map(str, seqs[1:20]))}"
    await alerts.alert(
        ALERT_KIND, detail, subject_host=host_id, subject_seq=seqs[0], subject_seqs=seqs
    )


@dataclass(frozen=True, slots=True)
class Status:
    """What the console says of one meeting check's signature."""

    state: str  # valid, invalid, unchecked
    detail: str = ""  # the alert's detail, or why it was not looked up
    alert_seq: int = 0  # the collector's alert naming the check (its event page)


def statuses(
    checks: Iterable[EventRow], alert_rows: Iterable[EventRow], *, complete: bool
) -> dict[tuple[str, int], Status]:
    """The signature status of each meeting check row, by (host, seq).

    ``alert_rows`` are the collector's ``meeting_signature`` alerts since the oldest
    check; ``complete`` False when that listing was cut short, so a check no alert in
    it names is ``unchecked`` rather than shown as valid.
    """
    bad: dict[tuple[str, int], Status] = {}
    for row in alert_rows:
        t = events_pb2.Event.FromString(row.body).tamper
        if t.kind == ALERT_KIND:
            for seq in {t.subject_seq, *t.subject_seqs}:
                bad[(t.subject_host, seq)] = Status("invalid", t.detail, row.seq)
    default = Status(VALID) if complete else Status("unchecked", "too many alerts to look up")
    return {(r.host_id, r.seq): bad.get((r.host_id, r.seq), default) for r in checks}


def lookup(store: Store, checks: list[EventRow]) -> dict[tuple[str, int], Status]:
    """The signature status of each meeting check row, from the alerts in ``store``."""
    from collector.ingest import COLLECTOR_HOST  # noqa: PLC0415 (ingest imports this module)

    alert_rows = store.console_events(
        ConsoleQuery(
            host_id=COLLECTOR_HOST,
            kind="tamper",
            # An alert is recorded after its check arrived: none is older than the checks.
            since_us=min((r.received_us for r in checks), default=0),
            contains=ALERT_KIND.encode(),
            limit=LOOKUP_ALERTS,
        )
    )
    return statuses(checks, alert_rows, complete=len(alert_rows) < LOOKUP_ALERTS)
