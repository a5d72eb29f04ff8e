"""This host's own record, read from its spool: ``baomi-agent events`` and ``report``.

For the officer who inspects an offline secret computer in person. The spool holds every
event not yet confirmed imported (and the last ``spool.RETAINED`` that were); the
listing looks like ``baomi-collector events`` (same columns, words and heartbeat
folding), the report like the host section of the collector's inspection report, in
text, without the collector's code.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from baomi import chain, display
from baomi.clitext import lang, t, table
from baomi.v1 import events_pb2
from google.protobuf import json_format

from agent.errors import AgentError, SpoolError
from agent.spool import Spool

_INFO = events_pb2.SEVERITY_INFO
_DENY = events_pb2.DECISION_DENY
REPORT_LIST_LIMIT = 50  # rows per detail list of the report; totals are exact


def open_spool(state_dir: Path) -> Spool:
    """The spool of ``state_dir``; AgentError saying what to do when there is none."""
    try:
        return Spool(state_dir / "spool.db")
    except SpoolError as e:
        raise AgentError(
            f"{e} (or give the agent's state directory: baomi-agent --state-dir DIR ...)"
        ) from e


def records(spool: Spool) -> Iterator[tuple[bytes, events_pb2.Event]]:
    """Every kept event, oldest first, with its bytes as spooled."""
    after = 0
    while rows := spool.read_after(after, 1000):
        for seq, body in rows:
            yield body, events_pb2.Event.FromString(body)
            after = seq


def heartbeat(event: events_pb2.Event) -> bool:
    """An INFO agent_status: folded out of listings, as the collector does."""
    return event.WhichOneof("kind") == "agent_status" and event.severity <= _INFO


def event_dict(body: bytes, event: events_pb2.Event) -> dict[str, object]:
    """An event as JSON-ready data (the collector's ``events --json`` fields)."""
    doc: dict[str, object] = json_format.MessageToDict(event, preserving_proto_field_name=True)
    doc["hash"] = chain.bytes_hash(body).hex()
    doc["prev_hash"] = event.prev_hash.hex()
    return doc


def list_events(
    state_dir: Path, *, limit: int, kind: str | None, heartbeats: bool, as_json: bool
) -> list[str]:
    """The lines of ``baomi-agent events``: newest first, at most ``limit``."""
    spool = open_spool(state_dir)
    try:
        shown: collections.deque[tuple[bytes, events_pb2.Event]] = collections.deque(maxlen=limit)
        for body, event in records(spool):
            if kind is not None and event.WhichOneof("kind") != kind:
                continue
            if not heartbeats and kind != "agent_status" and heartbeat(event):
                continue
            shown.append((body, event))
    finally:
        spool.close()
    newest = list(reversed(shown))
    if as_json:
        # json.dumps escapes C0 controls, escape_json the rest (DEL, C1, bidi).
        return [
            display.escape_json(json.dumps(event_dict(b, e), ensure_ascii=False)) for b, e in newest
        ]
    if not newest:
        return []
    language = lang()
    columns = ("time", "seq", "severity", "kind", "detail")
    rows = [tuple(t(f"events.col.{c}", language) for c in columns)]
    for body, event in newest:
        name = str(event.WhichOneof("kind"))
        severity = events_pb2.Severity.Name(event.severity).removeprefix("SEVERITY_").lower()
        doc = event_dict(body, event)
        rows.append(
            (
                _when(event),
                f"#{event.seq}",
                t(f"events.severity.{severity}", language, default=severity),
                display.escape(t(f"events.kind.{name}", language, default=name)),
                display.escape_json(json.dumps(doc.get(name, {}), ensure_ascii=False)),
            )
        )
    return table(rows)


def _when(event: events_pb2.Event) -> str:
    return event.time.ToDatetime(dt.UTC).isoformat(timespec="seconds")


@dataclass
class _Tally:
    """What one pass over the record found."""

    events: int = 0
    first: str = ""
    last: str = ""
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    denied: list[str] = field(default_factory=list)
    denied_total: int = 0
    usb: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    tamper: list[str] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    breaks: list[int] = field(default_factory=list)


def _line(event: events_pb2.Event, text: str) -> str:
    return display.escape(f"{_when(event)} #{event.seq} {text}")


def _tally(spool: Spool) -> _Tally:
    found = _Tally()
    prev: bytes | None = None
    for body, event in records(spool):
        kind = str(event.WhichOneof("kind"))
        found.events += 1
        found.first = found.first or _when(event)
        found.last = _when(event)
        found.kinds[kind] += 1
        if prev is not None and event.prev_hash != prev:
            found.breaks.append(event.seq)
        prev = chain.bytes_hash(body)
        if kind == "file_access" and event.file_access.decision == _DENY:
            a = event.file_access
            found.denied_total += max(a.count, 1)
            found.denied.append(_line(event, f"uid {a.uid} {a.action} {a.path}: {a.reason}"))
        elif kind == "device":
            d = event.device
            decision = events_pb2.Decision.Name(d.decision).removeprefix("DECISION_").lower()
            found.usb.append(
                _line(event, f"{d.action} {d.vendor_id}:{d.product_id} {d.name}: {decision}")
            )
        elif kind == "network":
            n = event.network
            if n.violation:
                found.links.append(_line(event, f"{n.action} {n.interface}: {n.reason}"))
        elif kind == "tamper":
            found.tamper.append(_line(event, f"{event.tamper.kind}: {event.tamper.detail}"))
        elif kind == "console_action" and event.console_action.action in ("export", "forget"):
            c = event.console_action
            found.exports.append(_line(event, f"{c.action} {c.target}: {c.detail}"))
    return found


def host_report(state_dir: Path) -> list[str]:
    """The lines of ``baomi-agent report``: this host's record, for an inspection on site."""
    spool = open_spool(state_dir)
    try:
        found = _tally(spool)
        head, acked, exported = spool.head[0], spool.acked[0], spool.exported
        host = spool.host_id
        waiting = spool.pending()
    except sqlite3.Error as e:
        raise AgentError(f"cannot read the spool: {e}") from e
    finally:
        spool.close()
    language = lang()

    def say(key: str, **values: object) -> str:
        return t(f"report.{key}", language, None, **values)

    kinds = ", ".join(
        f"{t(f'events.kind.{k}', language, default=k)} {n}" for k, n in sorted(found.kinds.items())
    )
    out = [
        say("title", host=host),
        say("made", when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        say("record", head=head, kept=found.events, first=found.first, last=found.last),
        say("export", exported=exported, acked=acked, waiting=waiting),
        say("chain_broken", seqs=found.breaks) if found.breaks else say("chain_ok"),
        say("by_kind", kinds=kinds),
    ]
    sections = (
        (say("denied", count=found.denied_total), found.denied),
        (say("usb"), found.usb),
        (say("links"), found.links),
        (say("tamper"), found.tamper),
        (say("exports"), found.exports),
    )
    for title, lines in sections:
        out += ["", say("section", title=title)]
        out += [f"  {x}" for x in lines[-REPORT_LIST_LIMIT:]] or [f"  {say('none')}"]
    return out
