"""``baomi-agent meeting check`` and ``meeting sweep``: run, print, sign and spool;
``meeting attest``: sign a manual shielding-cabinet attestation.

Exit codes: 0 cleared (every mandatory item passes), 1 not cleared, 2 bad input (the
error says which file, line and why).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baomi.clitext import cells, fit, lang, pad, t
from baomi.display import escape, escape_json
from baomi.policy.errors import PolicyError
from baomi.policy.subjects import Subjects
from baomi.v1 import events_pb2

from agent.errors import AgentError, ConfigError
from agent.identity import load_identity
from agent.spool import Spool

if TYPE_CHECKING:
    from baomi.meeting.rooms import Meeting

    from agent.meeting.check import Item

# The checks themselves (agent.meeting.check: devices, processes, the cabinet, ~1.3 MB)
# and the room and meeting files' parser are imported by the commands that run them:
# every baomi-agent command builds this parser, and the running agent should not carry
# them for a command it never runs.

DEFAULT_ROOMS = Path("policies/rooms.toml")
DEFAULT_MEETINGS = Path("policies/meetings.toml")
DEFAULT_SUBJECTS = Path("policies/subjects.toml")
EVIDENCE_WIDTH = 100  # terminal cells of evidence per table row
WIDTHS = (4, 8, 1, 46)  # narrowest ID, RESULT, M and ITEM columns, in terminal cells


@dataclass(frozen=True, slots=True)
class Header:
    """The line above the table: the room and meeting checked, or the sweep's."""

    room: str
    meeting: str = ""
    inspector: str = ""  # given for a sweep

    def text(self, language: str = "en") -> str:
        """The header in ``language`` (English is what the JSON output says)."""
        if self.inspector:
            return t(
                "meeting.header_sweep",
                language,
                meeting=self.meeting,
                room=self.room,
                inspector=self.inspector,
            )
        text = t("meeting.header_room", language, room=self.room)
        if self.meeting:
            text += t("meeting.header_meeting", language, meeting=self.meeting)
        return text


def _meeting(args: argparse.Namespace, room: str | None) -> Meeting | None:
    from baomi.meeting.rooms import load_meetings  # noqa: PLC0415 - see the imports

    if not args.meeting:
        return None
    meetings = load_meetings(args.meetings)
    meeting = meetings.get(args.meeting)
    if meeting is None:
        raise ConfigError(f"{args.meetings}: no meeting {args.meeting!r}")
    if room is not None and meeting.room != room:
        raise ConfigError(f"meeting {meeting.id} is in room {meeting.room}, not {room}")
    return meeting


def verdict(items: list[Item], language: str = "en") -> str:
    """CLEARED or NOT CLEARED, saying which optional items were not measured: a room
    cleared without its optional checks was cleared on less than the full list.

    English by default: it is also the JSON output's ``verdict``, which never changes
    with the language."""
    from agent.meeting.check import cleared, not_measured  # noqa: PLC0415 - see the imports

    text = t("meeting.cleared" if cleared(items) else "meeting.not_cleared", language)
    blocking = [
        f"{i.id} {_result(i.result, language)}" for i in items if i.mandatory and i.result != "pass"
    ]
    separator = t("list_separator", language)
    if blocking:
        text += t("meeting.blocking", language, items=separator.join(blocking))
    missing = not_measured(items)
    if missing:
        text += t("meeting.optional_missing", language, items=separator.join(missing))
    return text


def _result(result: str, language: str) -> str:
    return t(f"meeting.result.{result}", language, default=result)


@dataclass(frozen=True, slots=True)
class Signed:
    """Who signed a check and as which spooled event; no host: not signed."""

    host: str = ""
    seq: int = 0

    def text(self, language: str = "en") -> str:
        """What was done, in ``language`` (English is what the JSON output says)."""
        if not self.host:
            return t("meeting.not_signed", language)
        return t("meeting.signed", language, host=self.host, seq=self.seq)


def _print(items: list[Item], *, as_json: bool, header: Header, signed: Signed) -> None:
    from agent.meeting.check import cleared, not_measured  # noqa: PLC0415 - see the imports

    # Evidence names what the room's scans found (device and network names): chosen by
    # whoever brought the device, so shown through the one escaping rule.
    if as_json:
        print(
            escape_json(json.dumps(
                {
                    "header": header.text(),
                    "cleared": cleared(items),
                    "verdict": verdict(items),
                    "not_measured": not_measured(items),
                    "signed": signed.text(),
                    "items": [
                        {
                            "id": i.id,
                            "title": i.title,
                            "result": i.result,
                            "evidence": i.evidence,
                            "mandatory": i.mandatory,
                        }
                        for i in items
                    ],
                },
                ensure_ascii=False,
            ))
        )  # fmt: skip
        return
    language = lang()
    print(escape(header.text(language)))
    columns = ("id", "result", "mandatory", "item")
    names = [t(f"meeting.col.{c}", language) for c in columns]
    rows = [
        (
            i.id,
            _result(i.result, language),
            "*" if i.mandatory else " ",
            escape(t(f"meeting.item.{i.id}", language, default=i.title)),
        )
        for i in items
    ]
    # Every row's evidence starts at the same cell, whatever the language of the titles.
    widths = [
        max(minimum, *(cells(r[n]) for r in [names, *rows])) for n, minimum in enumerate(WIDTHS)
    ]
    evidence = t("meeting.col.evidence", language)
    print(" ".join(pad(c, w) for c, w in zip(names, widths, strict=True)), evidence)
    for i, row in zip(items, rows, strict=True):
        cut = fit(escape(i.evidence), EVIDENCE_WIDTH)
        print(" ".join(pad(c, w) for c, w in zip(row, widths, strict=True)), cut)
    print(
        t(
            "meeting.verdict_line",
            language,
            verdict=verdict(items, language),
            signed=signed.text(language),
        )
    )


def _emit(check: events_pb2.MeetingCheck, state_dir: Path | None, severity: int) -> Signed:
    """Sign and spool ``check`` when the host is enrolled; say what was done."""
    from agent.meeting.check import sign_meeting_check  # noqa: PLC0415 - see the imports

    if state_dir is None:
        return Signed()
    identity = load_identity(state_dir)
    sign_meeting_check(check, identity.key_pem)
    spool = Spool(state_dir / "spool.db")
    try:
        event = events_pb2.Event(severity=severity, meeting_check=check)  # type: ignore[arg-type]
        spool.append([event])
    finally:
        spool.close()
    return Signed(identity.host_id, event.seq)


def _record_to(args: argparse.Namespace) -> Path | None:
    """The enrolled state directory to sign and spool with (the global --state-dir),
    when --record asks for it."""
    return Path(args.state_dir) if args.record else None


def _cmd_check(args: argparse.Namespace) -> int:
    from baomi.meeting.rooms import load_rooms  # noqa: PLC0415 - see the imports
    from baomi.meeting.sdr import SweepError  # noqa: PLC0415 - see the imports

    from agent.meeting.check import (  # noqa: PLC0415 - see the imports
        Inputs,
        check_severity,
        meeting_message,
        run_check,
    )

    try:
        rooms = load_rooms(args.rooms)
        room = rooms.get(args.room)
        if room is None:
            raise ConfigError(f"{args.rooms}: no room {args.room!r} (rooms: {', '.join(rooms)})")
        meeting = _meeting(args, room.name)
        subjects = Subjects.load(args.subjects) if meeting is not None else None
        items = run_check(Inputs(room=room, meeting=meeting, subjects=subjects, sweep=args.sweep))
    except (PolicyError, SweepError) as e:
        raise ConfigError(str(e)) from e
    check = meeting_message(room.name, meeting.id if meeting else "", "check", items)
    signed = _emit(check, _record_to(args), check_severity(check))
    header = Header(room.name, meeting.id if meeting else "")
    _print(items, as_json=args.json, header=header, signed=signed)
    return 0 if check.cleared else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from agent.meeting.check import meeting_message, run_sweep  # noqa: PLC0415 - see imports

    meeting = _meeting(args, None)
    if meeting is None:  # argparse requires --meeting; this keeps mypy and a bad caller honest
        raise ConfigError("meeting sweep needs --meeting M")
    items = run_sweep(meeting, args.returned.split(","), room_checked=args.room_checked)
    check = meeting_message(meeting.room, meeting.id, "sweep", items, args.inspector)
    missing = items[0].result == "fail"
    # A document not returned is a possible leak of classified material: HIGH.
    severity = (
        events_pb2.SEVERITY_HIGH
        if missing
        else (events_pb2.SEVERITY_INFO if check.cleared else events_pb2.SEVERITY_MEDIUM)
    )
    signed = _emit(check, _record_to(args), severity)
    header = Header(meeting.room, meeting.id, args.inspector)
    _print(items, as_json=args.json, header=header, signed=signed)
    return 0 if check.cleared else 1


def _cmd_attest(args: argparse.Namespace) -> int:
    """Write a signed manual cabinet attestation for one room and meeting."""
    from agent.meeting.cabinet import make_attestation  # noqa: PLC0415 - see the imports

    meeting = _meeting(args, args.room)
    if meeting is None:  # argparse requires --meeting
        raise ConfigError("meeting attest needs --meeting M")
    try:
        key_pem = args.key.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the inspectors' key {args.key}: {e.strerror}") from e
    when = args.at or datetime.now().astimezone()
    if when.tzinfo is None:
        raise ConfigError(f"--at {args.at.isoformat()} needs a time zone (+08:00)")
    state = {
        "doors": args.doors,
        "doors_open": args.door_open,
        "powered": not args.unpowered,
        "shielding_ok": not args.shielding_failed,
        "slots_total": args.slots_total,
        "slots_occupied": args.slots_occupied,
    }
    try:
        data = make_attestation(
            key_pem,
            room=args.room,
            meeting=meeting.id,
            inspector=args.inspector,
            attested_at=when,
            state=state,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot attest: {e}") from e
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {args.out}: {e.strerror}") from e
    print(
        f"attested cabinet of room {args.room} for meeting {meeting.id} at "
        f"{data['attested_at']} by {args.inspector}: {args.out}"
    )
    return 0


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as e:
        why = f"{text!r} is not ISO 8601 (2026-12-01T08:40+08:00)"
        raise argparse.ArgumentTypeError(why) from e


def add_parser(subparsers: Any) -> None:
    """Add ``meeting check``, ``meeting sweep`` and ``meeting attest`` to ``baomi-agent``."""
    meeting = subparsers.add_parser("meeting", help="pre-meeting check and post-meeting sweep")
    sub = meeting.add_subparsers(dest="meeting_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--meetings",
            type=Path,
            default=DEFAULT_MEETINGS,
            help="the meeting schedule (relative to the working directory)",
        )
        p.add_argument("--json", action="store_true", help="the result as JSON")
        p.add_argument(
            "--record",
            action="store_true",
            help="sign the result with this host's key and spool it for the collector "
            "(the host enrolled in the global --state-dir; without it: print only)",
        )

    check = sub.add_parser("check", help="run C1-C12; exit 0 only when cleared to start")
    check.add_argument("--room", required=True, help="room id in --rooms")
    check.add_argument("--meeting", help="meeting id in --meetings (C11, C12 need it)")
    check.add_argument(
        "--rooms",
        type=Path,
        default=DEFAULT_ROOMS,
        help="rooms and their devices (relative to the working directory)",
    )
    check.add_argument(
        "--subjects",
        type=Path,
        default=DEFAULT_SUBJECTS,
        help="register of people, for attendees' clearance (C11, C12)",
    )
    check.add_argument("--sweep", type=Path, help="rtl_power CSV taken now (C5, C10)")
    common(check)
    check.set_defaults(func=_cmd_check)

    sweep = sub.add_parser("sweep", help="C13: materials returned and room checked (清场)")
    sweep.add_argument("--meeting", required=True, help="meeting id in --meetings")
    sweep.add_argument("--inspector", required=True, help="who swept the room")
    sweep.add_argument("--returned", default="", help="document numbers returned, DOC1,DOC2")
    sweep.add_argument("--room-checked", action="store_true", help="room and seats checked")
    common(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    attest = sub.add_parser(
        "attest",
        help="sign a manual shielding-cabinet attestation (C7) for one room and meeting",
    )
    attest.add_argument("--room", required=True, help="room id the cabinet stands in")
    attest.add_argument("--meeting", required=True, help="meeting id in --meetings")
    attest.add_argument(
        "--meetings",
        type=Path,
        default=DEFAULT_MEETINGS,
        help="the meeting schedule (relative to the working directory)",
    )
    attest.add_argument(
        "--key", type=Path, required=True, help="the inspectors' office EC private key (PEM)"
    )
    attest.add_argument("--inspector", required=True, help="who looked at the cabinet")
    attest.add_argument("--doors", type=int, required=True, help="the cabinet's doors (1-16)")
    attest.add_argument(
        "--door-open", type=int, action="append", default=[], metavar="N", help="door N is open"
    )
    attest.add_argument("--unpowered", action="store_true", help="the cabinet has no power")
    attest.add_argument(
        "--shielding-failed", action="store_true", help="the cabinet's self-test fails"
    )
    attest.add_argument("--slots-total", type=int, required=True, help="phone slots")
    attest.add_argument("--slots-occupied", type=int, required=True, help="slots holding a phone")
    attest.add_argument(
        "--at", type=_when, help="when the inspector looked, ISO 8601 with zone (default: now)"
    )
    attest.add_argument("--out", type=Path, required=True, help="the attestation file to write")
    attest.set_defaults(func=_cmd_attest)


__all__ = ["AgentError", "add_parser"]
