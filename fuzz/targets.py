"""The fuzz targets: one function per parser of untrusted input, and what each may raise.

Each target takes the fuzzer's bytes and does with them what the product does with such
input. ``Target.expected`` holds the parser's own "bad input, clear message" errors;
any other exception is a crash, a bug in the product. So is a broken promise the
target checks, raised as AssertionError: a rule that does not read back as written, a
label that does not read back as set, a cached answer that differs from a fresh one,
a value handed to a store that PostgreSQL would refuse.

Targets that read files write them into a directory of their own, made once per
process (:func:`scratch`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from baomi import chain as chain_rule
from baomi import labels as label_rules
from baomi.devices.rules import DeviceFacts, Rule, RuleError, RuleSet
from baomi.meeting.rooms import RoomsError, load_meetings, load_rooms
from baomi.policy.errors import LabelError, PolicyError
from baomi.policy.policyset import MODEL_FILE, POLICY_FILE, SUBJECTS_FILE, PolicySet
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError
from psycopg.adapt import PyFormat, Transformer
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match, Route

from agent.sensors.usb import parse_descriptors, usbguard_hash
from collector import audit, checkpoint
from collector.console import eventview, routes
from collector.console.app import DEFAULT_TZ, ID_MAX, Ctx, parse_id
from collector.console.errors import ConsoleError
from collector.console.routes import audit as audit_pages
from collector.console.routes import events as event_pages
from collector.console.routes import findings as finding_pages
from collector.ingest import COLLECTOR_HOST, ForeignHost, HostChain, Rejected, to_row
from collector.store.base import CheckpointRow, EventRow
from collector.store.sqlite import SQLiteStore
from fuzz import samples

if TYPE_CHECKING:
    from starlette.types import Message

    from collector.console.app import Console
    from collector.store.base import Store

#: Splits one input into the several files a target reads (ASCII record separator).
SEP = b"\x1e"
T0_US = samples.T0 * 1_000_000
INT64 = range(-(2**63), 2**63)  # the stores' integer columns


@dataclass(frozen=True, slots=True)
class Target:
    """A parser under fuzzing: the function fed the input, and the exceptions that are
    its own answers to bad input (anything else is a crash)."""

    name: str
    run: Callable[[bytes], object]
    expected: tuple[type[BaseException], ...]
    about: str


@functools.cache
def scratch() -> Path:
    """A directory of this process for the files targets write (made once)."""
    path = Path(tempfile.mkdtemp(prefix="baomi-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _broken(promise: str, *details: object) -> AssertionError:
    return AssertionError(promise + "".join(f"\n  {d!r}"[:600] for d in details))


# --------------------------------------------------------------------------- ingest

RECEIVED_US = T0_US + 60_000_000


@functools.cache
def _mid_chain() -> tuple[int, bytes]:
    """The head after the second sample event: batches then hold replays too."""
    second = samples.sample_events()[1]
    return second.seq, chain_rule.event_hash(second)


def ingest(data: bytes) -> None:
    """A batch as the collector's stream reads it (``chain.batch_events``, then the
    chain check and ``collector.validate`` through ``HostChain.check``), from the first
    event of the host and from the middle of its chain."""
    bodies = chain_rule.batch_events(data)
    for seq, head in ((0, chain_rule.GENESIS), _mid_chain()):
        rows = HostChain(samples.HOST, seq, head).check(bodies, RECEIVED_US)
        for row in rows:
            columns = (row.seq, row.severity, row.event_time_us, row.received_us)
            if not all(value in INT64 for value in columns):
                raise _broken("a checked row does not fit the stores' columns", row)


# --------------------------------------------------------------------------- chain


class _Reader:
    """Reads fixed-size fields off the input; past its end, fields read as zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.at : self.at + n]
        self.at += len(out)
        return out

    def int(self, n: int, *, signed: bool = False) -> int:
        return int.from_bytes(self.take(n).ljust(n, b"\0"), "big", signed=signed)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.at)


# Flags of the chain input (see chain_input): of the whole, of a checkpoint, of a row.
ENROLLED, LATE, WITNESS, WITNESS_STORED = 1, 2, 4, 8
OWN_HEAD, RECEIVED, BAD_SIGNATURE, WRONG_PREV, CREATED_CHANGED, COLLECTOR_HEAD = (
    1, 2, 4, 8, 16, 32,
)  # fmt: skip
OWN_HASH_NOT, COLUMNS_NOT_FROM_BODY, IN_COLLECTOR_CHAIN, ACCEPTED, TIME_EDITED = 1, 2, 4, 8, 16


@dataclass(frozen=True, slots=True)
class ChainRow:
    """A stored event row, as a seed of the chain target describes it."""

    seq: int  # -32768..32767: a tampered table may hold any
    body: bytes
    received_s: int = 0  # seconds after samples.T0, 0..255
    hash: bytes | None = None  # None: the body's SHA-256, as ingest stores it
    columns_from_body: bool = True
    collector: bool = False  # a row of the collector's own chain
    accepted: bool = False  # an operator accepted a break here (--accept-break)
    time_edited: bool = False  # received_at changed after the checkpoints signed it


@dataclass(frozen=True, slots=True)
class ChainCheckpoint:
    """A checkpoint signed with the target's key, as a seed describes it."""

    created_s: int  # seconds after samples.T0, 0..255
    head: int  # the host's head seq it signs, 0..65535
    head_hash: bytes | None = None  # None: the stored row's own hash
    received: bool = True  # with the receive-time digest of what it covers
    bad_signature: bool = False
    wrong_prev: bool = False
    created_changed: bool = False  # the created_at column differs from the body
    collector_head: bool = False  # it also signs the collector chain's last row


def chain_input(
    rows: list[ChainRow],
    checkpoints: Sequence[ChainCheckpoint] = (),
    *,
    enrolled: bool = True,
    late: bool = False,
    witness: bytes | None = None,
    witness_stored: bool = False,
) -> bytes:
    """The chain target's input: a stored record and a witness file. ``late``: the
    verifier runs long after the newest checkpoint (nothing is signing); ``witness``:
    a witness file's text, after the stored checkpoints' lines if ``witness_stored``."""
    flags = (
        (ENROLLED if enrolled else 0)
        | (LATE if late else 0)
        | (WITNESS if witness is not None else 0)
        | (WITNESS_STORED if witness_stored else 0)
    )
    out = bytearray([flags, len(checkpoints), len(rows)])
    for c in checkpoints:
        c_flags = (
            (OWN_HEAD if c.head_hash is None else 0)
            | (RECEIVED if c.received else 0)
            | (BAD_SIGNATURE if c.bad_signature else 0)
            | (WRONG_PREV if c.wrong_prev else 0)
            | (CREATED_CHANGED if c.created_changed else 0)
            | (COLLECTOR_HEAD if c.collector_head else 0)
        )
        out += bytes([c.created_s]) + c.head.to_bytes(2, "big") + bytes([c_flags])
        if c.head_hash is not None:
            out += c.head_hash.ljust(32, b"\0")[:32]
    for r in rows:
        r_flags = (
            (OWN_HASH_NOT if r.hash is not None else 0)
            | (0 if r.columns_from_body else COLUMNS_NOT_FROM_BODY)
            | (IN_COLLECTOR_CHAIN if r.collector else 0)
            | (ACCEPTED if r.accepted else 0)
            | (TIME_EDITED if r.time_edited else 0)
        )
        out += r.seq.to_bytes(2, "big", signed=True) + bytes([r.received_s, r_flags])
        out += len(r.body).to_bytes(2, "big") + r.body
        if r.hash is not None:
            out += r.hash.ljust(32, b"\0")[:32]
    return bytes(out + (witness or b""))


class _Record:
    """What ``audit verify`` reads of a Store, in memory: each host's rows in seq order,
    one per seq (the stores' primary key), the checkpoints, the enrolled hosts."""

    def __init__(self, rows: Mapping[str, list[EventRow]], *, enrolled: bool) -> None:
        self._rows = {
            host: sorted({r.seq: r for r in reversed(found)}.values(), key=lambda r: r.seq)
            for host, found in rows.items()
        }
        self._enrolled = enrolled
        self.stored: list[CheckpointRow] = []
        #: (host, seq) -> receive time when the checkpoints signed it, where it differs
        self.signed_times: dict[tuple[str, int], int] = {}

    def chain(self, host_id: str) -> Iterator[EventRow]:
        return iter(self._rows.get(host_id, []))

    def hosts(self) -> list[str]:
        return [h for h, rows in self._rows.items() if rows]

    def checkpoints(self) -> list[CheckpointRow]:
        return list(self.stored)

    def decommissioned(self) -> dict[str, int]:
        return {}

    def host_certificates(self, host_id: str) -> list[bytes]:
        return [bytes(32)] if self._enrolled and host_id == samples.HOST else []

    def hashes(self, host_id: str, first_seq: int, last_seq: int) -> dict[int, bytes]:
        return {r.seq: r.hash for r in self.chain(host_id) if first_seq <= r.seq <= last_seq}


@functools.cache
def _signing_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _received_digest(times: list[tuple[int, int]]) -> str:
    """A checkpoint's ``received`` digest (collector/checkpoint.py describes it)."""
    h = hashlib.sha256()
    for seq, received_us in times:
        h.update(seq.to_bytes(8, "big") + received_us.to_bytes(8, "big", signed=True))
    return h.hexdigest()


def _sign(record: _Record, specs: list[tuple[int, int, int, bytes]]) -> None:
    """Checkpoints as the collector makes them (collector/checkpoint.py), from specs."""
    key = _signing_key()
    prev, signed = checkpoint.FIRST_PREV, dict[str, tuple[int, bytes]]()
    for number, (created_s, head, c_flags, head_hash) in enumerate(specs, 1):
        own = {r.seq: r.hash for r in record.chain(samples.HOST)}
        digest = own.get(head, bytes(32)) if c_flags & OWN_HEAD else head_hash
        heads = {samples.HOST: (head, digest)}
        last = list(record.chain(COLLECTOR_HOST))[-1:]
        if c_flags & COLLECTOR_HEAD and last and last[0].seq > 0:
            heads[COLLECTOR_HOST] = (last[0].seq, last[0].hash)
        received = {}
        if c_flags & RECEIVED:
            for host, (seq, _) in heads.items():
                before = signed.get(host, (0, b""))[0]
                times = [
                    (r.seq, record.signed_times.get((host, r.seq), r.received_us))
                    for r in record.chain(host)
                    if before < r.seq <= seq
                ]
                received[host] = _received_digest(times)
        created = T0_US + created_s * 1_000_000
        doc = {
            "v": 2,
            "created_us": created,
            "prev": "f" * 64 if c_flags & WRONG_PREV else prev,
            "heads": {h: [s, x.hex()] for h, (s, x) in sorted(heads.items())},
            "received": dict(sorted(received.items())),
        }
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        signature = key.sign(body)
        if c_flags & BAD_SIGNATURE:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        row = CheckpointRow(number, created + bool(c_flags & CREATED_CHANGED), body, signature)
        record.stored.append(row)
        prev, signed = checkpoint.digest(row), heads


def _row(
    host: str, seq: int, received_us: int, body: bytes, digest: bytes | None, *, from_body: bool
) -> EventRow:
    """A stored row: columns as the body says (or not), the body's hash unless given."""
    kind, severity, time_us = "tamper", 0, 0
    if from_body:
        with contextlib.suppress(DecodeError):
            ev = events_pb2.Event.FromString(body)
            kind, severity = ev.WhichOneof("kind") or "", ev.severity
            time_us = ev.time.seconds * 1_000_000 + ev.time.nanos // 1000
    if digest is None:
        digest = hashlib.sha256(body).digest()
    return EventRow(host, seq, kind, severity, time_us, received_us, digest, body)


def chain(data: bytes) -> None:
    """``audit verify`` over a stored record and a witness file made from the input:
    one host's rows (bodies, hashes, columns, receive times) and the collector's own
    chain (whose chain_break alerts it reads), checkpoints signed with a key of this
    process over heads the input names, breaks an operator accepted, a witness file.
    It never raises: damage goes in the report."""
    r = _Reader(data)
    flags, n_checkpoints, n_rows = r.int(1), r.int(1) % 8, r.int(1)
    specs = []
    for _ in range(n_checkpoints):
        created_s, head, c_flags = r.int(1), r.int(2), r.int(1)
        head_hash = b"" if c_flags & OWN_HEAD else r.take(32).ljust(32, b"\0")
        specs.append((created_s, head, c_flags, head_hash))
    rows: dict[str, list[EventRow]] = {samples.HOST: [], COLLECTOR_HOST: []}
    accepted: set[tuple[str, int]] = set()
    edited: dict[tuple[str, int], int] = {}
    for _ in range(n_rows):
        seq, received_s, r_flags = r.int(2, signed=True), r.int(1), r.int(1)
        body = r.take(r.int(2))
        digest = r.take(32).ljust(32, b"\0") if r_flags & OWN_HASH_NOT else None
        host = COLLECTOR_HOST if r_flags & IN_COLLECTOR_CHAIN else samples.HOST
        received_us = T0_US + received_s * 1_000_000
        if r_flags & TIME_EDITED:
            edited[host, seq] = received_us
            received_us += 1_000_000
        from_body = not r_flags & COLUMNS_NOT_FROM_BODY
        rows[host].append(_row(host, seq, received_us, body, digest, from_body=from_body))
        if r_flags & ACCEPTED:
            accepted.add((host, seq))
    record = _Record(rows, enrolled=bool(flags & ENROLLED))
    record.signed_times = edited
    _sign(record, specs)
    witness: list[CheckpointRow] = []
    if flags & WITNESS:
        path = scratch() / "checkpoints.witness"
        stored = b"".join(map(checkpoint.witness_line, record.stored))
        path.write_bytes((stored if flags & WITNESS_STORED else b"") + r.rest())
        with contextlib.suppress(checkpoint.WitnessError):  # damage in verify_witnessed
            witness = checkpoint.read_witness(path)
    now_us = T0_US + (3600 if flags & LATE else 300) * 1_000_000
    report = audit.verify(
        cast("Store", record),
        _signing_key().public_key(),
        witness=witness,
        accepted=accepted,
        now_us=now_us,
    )
    if report.events != sum(1 for host in rows for _ in record.chain(host)):
        raise _broken("audit verify did not look at every stored event", report)


# --------------------------------------------------------------------------- policy

#: The file a policy input replaces, by its first byte (mod 4); None: all three, split
#: by SEP in this order, a missing part being a missing file.
POLICY_MODES = (MODEL_FILE, POLICY_FILE, SUBJECTS_FILE, None)
POLICY_ALL = 3


@functools.cache
def shipped(name: str) -> bytes:
    """A file of the shipped ``policies/``."""
    return (samples.POLICIES / name).read_bytes()


def policy_files(data: bytes) -> dict[str, bytes | None]:
    """The policy files an input stands for (None: the file is absent)."""
    mode = POLICY_MODES[data[0] % len(POLICY_MODES)] if data else None
    body = data[1:]
    names = (MODEL_FILE, POLICY_FILE, SUBJECTS_FILE)
    if mode is None:
        parts = body.split(SEP, 2)
        return {name: parts[i] if i < len(parts) else None for i, name in enumerate(names)}
    return {name: body if name == mode else shipped(name) for name in names}


def _write_files(directory: Path, files: Mapping[str, bytes | None]) -> None:
    for name, content in files.items():
        path = directory / name
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)


def policy(data: bytes) -> None:
    """The file guard's policy directory (model.conf, policy.csv, subjects.toml) loaded
    by ``PolicySet.load``, one file fuzzed and the others shipped, or all three."""
    directory = scratch() / "policy"
    directory.mkdir(exist_ok=True)
    _write_files(directory, policy_files(data))
    PolicySet.load(directory)


# --------------------------------------------------------------------------- usbguard


@functools.cache
def _devices() -> tuple[DeviceFacts, ...]:
    return tuple(DeviceFacts.of(device) for device, _ in samples.usb_devices())


def usbguard(data: bytes) -> None:
    """devices.rules as the device policy reads it (bytes kept through surrogateescape):
    each line as one rule, then the whole file, evaluated against recorded devices.
    Every rule must read back as itself from its text (``str(rule)``)."""
    text = data.decode("utf-8", "surrogateescape")
    for number, line in enumerate(text.split("\n"), 1):
        try:
            rule = Rule.parse(line.removesuffix("\r"), path="devices.rules", line=number)
        except RuleError:
            continue
        try:
            again = Rule.parse(str(rule))
        except RuleError as e:
            raise _broken("a rule's text does not parse", line, str(rule), str(e)) from e
        if again != rule:
            raise _broken("a rule does not read back as itself", line, rule, again)
    rules = RuleSet.parse(text, path="devices.rules")
    for facts in _devices():
        found = rules.first_match(facts)
        if found is not None:
            rules.describe(found)


# --------------------------------------------------------------------------- rooms

BASELINE = "baselines/r301-jammer-off.csv"  # where the shipped rooms.toml finds it


def rooms_files(data: bytes) -> dict[str, bytes]:
    """rooms.toml, meetings.toml and a baseline sweep, split by SEP (shipped when absent)."""
    parts = data.split(SEP, 2)
    names = ("rooms.toml", "meetings.toml", BASELINE)
    return {name: parts[i] if i < len(parts) else shipped(name) for i, name in enumerate(names)}


def rooms(data: bytes) -> None:
    """The meeting rooms file (with the baseline sweep it names) and the meeting schedule,
    loaded by ``load_rooms`` and ``load_meetings``."""
    directory = scratch() / "rooms"
    directory.mkdir(exist_ok=True)
    _write_files(directory, rooms_files(data))
    with contextlib.suppress(RoomsError):
        load_rooms(directory / "rooms.toml")
    load_meetings(directory / "meetings.toml")


# --------------------------------------------------------------------------- labels

LABEL_KEY = bytes(range(32))
_HELPERS: tuple[tuple[str, Callable[[str], object]], ...] = (
    (label_rules.XATTR_LEVEL, label_rules.parse_level),
    (label_rules.XATTR_UNTIL, label_rules.parse_until),
    (label_rules.XATTR_SCOPE, label_rules.parse_scope),
    (label_rules.XATTR_ID, label_rules.parse_label_id),
    (label_rules.XATTR_HOME, label_rules.parse_home),
)


def label_attributes(data: bytes) -> dict[str, bytes]:
    """Extended attributes ``name=value``, split by SEP; names as os.listxattr gives
    them (undecodable bytes as surrogates), values as read."""
    raw: dict[str, bytes] = {}
    for record in data.split(SEP):
        name, _, value = record.partition(b"=")
        raw[name.decode("utf-8", "surrogateescape")] = value
    return raw


@functools.cache
def _label_file() -> Path:
    path = scratch() / "labelled"
    path.touch()
    return path


def labels(data: bytes) -> None:
    """Label attributes as the file guard reads them (``parse_label``, and through its
    cache), each value through its ``parse_*`` helper as an operator's argument on the
    command line would be, and a label set with those values (``set_label``) that must
    read back as set."""
    raw = label_attributes(data)
    label = label_rules.parse_label(raw)
    cached = label_rules._parse_cached(dict(raw))
    if cached != label:
        raise _broken("a cached label differs from a fresh parse", raw, label, cached)
    if label is not None and label.problem is None and label.level not in (0, 1, 2, 3):
        raise _broken("a valid label has no level", raw, label)
    # argv strings: what a shell hands to 'baomi-agent label set'
    args = {name: value.decode("utf-8", "surrogateescape") for name, value in raw.items()}
    for name, parse in _HELPERS:
        if name in args:
            try:
                parse(args[name])
            except UnicodeError:
                raise  # a ValueError by inheritance, but no message for an operator
            except ValueError:
                pass
    if label_rules.XATTR_LEVEL not in args:
        return
    path = _label_file()
    written = label_rules.set_label(
        path,
        args[label_rules.XATTR_LEVEL],
        until=args.get(label_rules.XATTR_UNTIL),
        scope=args.get(label_rules.XATTR_SCOPE, ()),
        label_id=args.get(label_rules.XATTR_ID),
        key=LABEL_KEY,
        home=args.get(label_rules.XATTR_HOME),
    )
    read = label_rules.read_label(path, LABEL_KEY)
    if read != written:
        raise _broken("a label set does not read back as set", args, written, read)


# --------------------------------------------------------------------------- console


@functools.cache
def _console_store() -> SQLiteStore:
    """A store holding the sample events of a host and of the collector's chain."""
    store = SQLiteStore(scratch() / "console.db")
    store.append(
        [
            to_row(ev, str(ev.WhichOneof("kind")), RECEIVED_US)
            for host in (samples.HOST, COLLECTOR_HOST)
            for ev in samples.sample_events(host)
        ]
    )
    return store


def _postgres_accepts(*values: object) -> None:
    """Raise when the PostgreSQL store's driver would refuse a value SQLite takes (text
    holding NUL): that request answers 500 there."""
    transformer = Transformer()
    for value in values:
        if value is not None:
            try:
                transformer.get_dumper(value, PyFormat.AUTO).dump(value)
            except Exception as e:  # psycopg.DataError and friends
                raise _broken("PostgreSQL refuses a value the console hands it", value) from e


def _search(
    store: SQLiteStore,
    filters: eventview.Filters,
    before: tuple[int, str, int] | None,
    limit: int,
) -> None:
    tz = ZoneInfo(DEFAULT_TZ)
    q = filters.query(tz, limit=limit, before=before)
    _postgres_accepts(q.host_id, q.kind, q.since_us, q.until_us, q.contains, *(q.before or ()))
    eventview.search(store, filters, tz, limit=limit, before=before)


def _routes() -> list[Route]:
    return [Route(p.path, p.handler, methods=list(p.methods)) for p in routes.ROUTES]


_ROUTES = _routes()


def _route_ids(store: SQLiteStore, path: str) -> None:
    """The console's routes matched against ``path`` (Starlette converts the ids in it),
    each id handed to the store as its handler hands it."""
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    for route in _ROUTES:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        params = child["path_params"]
        if any(isinstance(v, int) and not 0 < v <= ID_MAX for v in params.values()):
            continue  # app.guard answers 400 before the handler
        if "seq" in params and "\x00" not in params["host"]:  # event_pages.event_detail
            store.event(params["host"], params["seq"])
        if "number" in params:
            store.policy_version(params["number"])
        if "fid" in params:
            store.finding(params["fid"])


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


async def _form(store: SQLiteStore, body: bytes) -> None:
    """A form posted to the console: each field as ``Ctx.field`` reads it, the ids and
    dates in it as the POST handlers take them, and what they hand to the store."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "app": None,  # in the app: a form Starlette cannot parse is a 400, not an exception
    }
    ctx = Ctx(cast("Console", None), Request(scope, receive), None, "zh")
    try:
        names = list((await ctx.form()).keys())
    except HTTPException as e:
        if e.status_code >= 500:
            raise
        return
    fields = {}
    for name in names:
        with contextlib.suppress(ConsoleError):
            fields[name] = await ctx.field(name, MAX_FIELD_CHARS)
    _postgres_accepts(*fields.values())
    seq, number = parse_id(fields.get("seq", "")), parse_id(fields.get("number", ""))
    if seq is not None:  # devices/approve, findings/new
        store.event(fields.get("host", ""), seq)
    if number is not None:  # policy/rollback
        store.policy_version(number)
    with contextlib.suppress(ConsoleError):  # findings
        finding_pages._due(fields.get("due", ""))


MAX_FIELD_CHARS = 2000  # the longest text field the handlers take (a finding's note)


def console_query(data: bytes) -> None:
    """A console request line's target (``PATH?QUERY``): the query parameters as
    Starlette parses them, read by the events page (as a security administrator and as
    an auditor), the audit log and the findings list and run against a SQLite store;
    the ids of the path as the routes convert them; the query string as a posted form.
    Every value handed to the store must be one PostgreSQL takes too."""
    raw_path, _, query = data.partition(b"?")
    params = QueryParams(query)
    store = _console_store()
    for hidden in (("console_action",), ()):
        with contextlib.suppress(ConsoleError):
            filters = eventview.Filters.of(params, hidden=hidden)
            _search(
                store, filters, event_pages._cursor(params.get("before", "")), eventview.PAGE_EVENTS
            )
    with contextlib.suppress(ConsoleError):
        # audit_pages.audit_page's filters
        actor = params.get("actor", "").strip()[:200]
        filters = eventview.Filters(host=COLLECTOR_HOST, kind="console_action", user=actor)
        before = event_pages._cursor(params.get("before", ""))
        _search(store, filters, before, audit_pages.AUDIT_EVENTS)
    status = params.get("status", "")
    store.findings(status if status in finding_pages.FINDING_STATUSES else None)
    _route_ids(store, unquote(raw_path.decode("ascii", "replace")))
    _loop().run_until_complete(_form(store, query))


# --------------------------------------------------------------------------- descriptors


def descriptors(data: bytes) -> None:
    """A USB device's ``descriptors`` sysfs attribute (whatever the device sent) as the
    USB sensor reads it: parsed, and the parsed part hashed as USBGuard does."""
    parsed = parse_descriptors(data)
    if not 0 <= parsed.parsed <= len(data) or (not parsed.problem and parsed.parsed != len(data)):
        raise _broken("descriptors parsed past the data, or a part silently left", parsed)
    device, _ = samples.usb_devices()[0]
    usbguard_hash(device, data[: parsed.parsed])


# --------------------------------------------------------------------------- the table

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "ingest",
            ingest,
            (chain_rule.BatchError, Rejected, ForeignHost),
            "an EventBatch an agent sent: collector.ingest.HostChain.check",
        ),
        Target("chain", chain, (), "stored rows of a chain: collector.audit verification"),
        Target(
            "policy",
            policy,
            (PolicyError,),
            "model.conf, policy.csv, subjects.toml: baomi.policy.policyset.PolicySet.load",
        ),
        Target("usbguard", usbguard, (RuleError,), "USBGuard rules: baomi.devices.rules"),
        Target(
            "rooms",
            rooms,
            (RoomsError,),
            "rooms.toml, meetings.toml, baseline sweeps: baomi.meeting.rooms",
        ),
        Target(
            "labels",
            labels,
            (LabelError,),
            "user.baomi.* attributes and label values: baomi.labels",
        ),
        Target(
            "console_query",
            console_query,
            (ConsoleError,),
            "the console's query strings and ids: collector.console",
        ),
        Target(
            "descriptors",
            descriptors,
            (),
            "a USB device's descriptors: agent.sensors.usb.parse_descriptors",
        ),
    )
}
