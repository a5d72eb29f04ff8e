"""The inputs each target's corpus starts from, made at run time.

From this repository's shipped ``policies/``; from ``../shared/testdata`` when present
(USBGuard's own rule corpus, umockdev recordings: their licences are their own, so they
are read where they are and never copied here); and events, batches and stored chains
made in code.
"""

from __future__ import annotations

from collections.abc import Callable

from baomi import chain as chain_rule
from baomi.devices.policy import generate_rules
from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST
from fuzz import samples, targets
from fuzz.targets import SEP, ChainCheckpoint, ChainRow, chain_input


def _bodies(events: list[events_pb2.Event]) -> list[bytes]:
    return [chain_rule.canonical_bytes(ev) for ev in events]


def _event(**fields: object) -> bytes:
    """The first sample event with ``fields`` changed, serialized."""
    ev = samples.sample_events()[0]
    for name, value in fields.items():
        setattr(ev, name, value)
    return chain_rule.canonical_bytes(ev)


def ingest() -> list[bytes]:
    """Batches: the whole sample chain, parts of it (replays, gaps), and events with an
    unknown field, an unknown severity, a far time, another host, no kind."""
    bodies = _bodies(samples.sample_events())
    unknown_field = bodies[0] + b"\xf8\x06\x01"  # field 111, varint 1: a newer agent's
    no_kind = events_pb2.Event()
    no_kind.CopyFrom(samples.sample_events()[0])
    no_kind.ClearField("file_access")
    far = events_pb2.Event()
    far.CopyFrom(samples.sample_events()[0])
    far.time.seconds = 253_402_300_799
    return [
        chain_rule.batch_of(bodies),
        chain_rule.batch_of(bodies[:3]),
        chain_rule.batch_of(bodies[:5]),
        chain_rule.batch_of(bodies[3:]),
        chain_rule.batch_of([bodies[0], bodies[2]]),
        chain_rule.batch_of([unknown_field, *bodies[1:3]]),
        chain_rule.batch_of([_event(severity=9)]),
        chain_rule.batch_of([_event(host_id="ws-other")]),
        chain_rule.batch_of([_event(prev_hash=b"short")]),
        chain_rule.batch_of([chain_rule.canonical_bytes(no_kind)]),
        chain_rule.batch_of([chain_rule.canonical_bytes(far)]),
        b"",
    ]


def chain() -> list[bytes]:
    """Stored records: intact and signed, and with an altered body, a deleted row, a
    rewritten hash, columns that disagree with the body, a break the collector recorded
    (reviewed or not), an edited receive time, unsigned events, witness files."""
    bodies = _bodies(samples.sample_events())
    rows = [ChainRow(seq, body, received_s=seq) for seq, body in enumerate(bodies, 1)]
    alert = events_pb2.Event(
        host_id=COLLECTOR_HOST,
        seq=1,
        prev_hash=chain_rule.GENESIS,
        severity=events_pb2.SEVERITY_HIGH,
        tamper=events_pb2.Tamper(kind="chain_break", subject_host=samples.HOST, subject_seq=4),
    )
    alert.time.FromSeconds(samples.T0)
    collector = ChainRow(1, chain_rule.canonical_bytes(alert), collector=True)
    last = len(rows)
    signed = [ChainCheckpoint(100, 5), ChainCheckpoint(200, last, collector_head=True)]
    altered = [*rows[:2], ChainRow(3, bodies[2][:-1] + b"\x00", received_s=3), *rows[3:]]
    rewritten = [*rows[:4], ChainRow(5, bodies[4], hash=bytes(32)), *rows[5:]]
    columns = [*rows[:1], ChainRow(2, bodies[1], columns_from_body=False), *rows[2:]]
    reviewed = [*rows[:3], ChainRow(4, bodies[3], accepted=True), *rows[4:]]
    moved = [*rows[:6], ChainRow(7, bodies[6], received_s=7, time_edited=True), *rows[7:]]
    torn = b'{"id":3,"created_us":1,"body":"{}","signature":"00"}\n{"id":'
    return [
        chain_input([*rows, collector], signed, witness=b"", witness_stored=True),
        chain_input(rows, [ChainCheckpoint(250, last - 2)]),
        chain_input(altered, signed),
        chain_input([*rows[:4], *rows[5:]], signed),
        chain_input(rewritten, [ChainCheckpoint(100, 5, head_hash=bytes(32))]),
        chain_input(columns, enrolled=False),
        chain_input([*rows, collector], [ChainCheckpoint(5, 3, wrong_prev=True)], late=True),
        chain_input([*reviewed, collector], [ChainCheckpoint(9, 4, created_changed=True)]),
        chain_input(moved, signed, witness=torn, witness_stored=True),
        chain_input(rows[:2], [ChainCheckpoint(1, 2, bad_signature=True)], witness=b"[]\n"),
        chain_input([ChainRow(1, b"\xff\xff not protobuf")]),
        chain_input([]),
    ]


def policy() -> list[bytes]:
    """The shipped model.conf, policy.csv and subjects.toml, one at a time and together."""
    names = [name for name in targets.POLICY_MODES if name is not None]
    out = [bytes([mode]) + targets.shipped(name) for mode, name in enumerate(names)]
    out.append(bytes([targets.POLICY_ALL]) + SEP.join(targets.shipped(name) for name in names))
    return out


def usbguard() -> list[bytes]:
    """The shipped devices.rules, rules generated for the recorded devices, and every
    line of USBGuard's own rule corpus (good and bad), alone and in blocks."""
    out = [(samples.POLICIES / "devices.rules").read_bytes()]
    devices = [device for device, _ in samples.usb_devices()]
    out.append(generate_rules(devices).encode("utf-8", "surrogateescape"))
    for name in ("test-rules.good", "test-rules.bad"):
        path = samples.TESTDATA / "usbguard" / name
        if not path.is_file():
            continue
        lines = path.read_bytes().split(b"\n")
        out += [line for line in lines if line.strip()]
        out += [b"\n".join(lines[i : i + 40]) for i in range(0, len(lines), 40)]
    return out


ROOMS_MANUAL = b"""\
[rooms.r9]
allowed_software = ["pipewire"]
mandatory_extra = ["C8", "C9"]
capture_devices = ["/dev/video*"]

[[rooms.r9.pa]]
alsa = "PCH"
name = "built-in"

[rooms.r9.cabinet]
adapter = "manual"
attestation = "cabinet.json"
key = "inspectors.pub.pem"
"""
ROOMS_HTTP = b"""\
[rooms.r2]
rssi_dbm = -80
[rooms.r2.cabinet]
adapter = "http"
url = "https://cabinet.example/state"
timeout = 5
"""


def rooms() -> list[bytes]:
    """The shipped rooms, meetings and baseline together; rooms with other cabinets."""
    rooms_toml, meetings_toml, baseline = (
        targets.shipped(name) for name in ("rooms.toml", "meetings.toml", targets.BASELINE)
    )
    return [
        SEP.join((rooms_toml, meetings_toml, baseline)),
        rooms_toml,
        SEP.join((ROOMS_MANUAL, meetings_toml)),
        SEP.join((ROOMS_HTTP, meetings_toml, baseline[: len(baseline) // 2])),
    ]


def _attributes(**values: str) -> bytes:
    return SEP.join(f"user.baomi.{name}={value}".encode() for name, value in values.items())


def labels() -> list[bytes]:
    """Label attributes: full labels in each language, the update marker, a seal, an
    attribute Baomi does not know, a label without level."""
    return [
        _attributes(
            level="绝密",
            until="2030-12-31",
            scope="dept:finance,user:wang,role:analyst",
            label_id="JM-2026-001",
            home="/srv/secret/plan.docx",
        ),
        _attributes(level="secret", scope="user:li", home="/srv/secret"),
        _attributes(level="1", until="2026-02-28", label_id="GB/T-1#2"),
        _attributes(level="updating"),
        _attributes(level="机密", seal="00" * 32),
        _attributes(level="内部", colour="red"),
        _attributes(until="2030-01-01") + SEP + b"user.other=1",
    ]


def console_query() -> list[bytes]:
    """Request targets of the console's list pages and links, as the pages make them."""
    host = samples.HOST.encode()
    cursor = b"%d_3_%s" % (samples.T0 * 1_000_000 + 3_000_500, host)
    return [
        b"/events?host=" + host + b"&kind=file_access&severity=high"
        b"&since=2025-11-27&until=2025-11-28T08%3A00",
        b"/events?before=" + cursor,
        b"/events?user=wang&path=%2Fsrv%2Fsecret&since=2025-11-27T00:00:00%2B08:00",
        b"/events/" + host + b"/3",
        b"/policy/versions/2",
        b"/findings/1?status=open",
        b"/audit?actor=sue&before=" + cursor,
        b"/devices/approve?seq=3&host=" + host,
        b"/events/stream?kind=console_action&severity=critical",
    ]


def descriptors() -> list[bytes]:
    """The descriptors of the recorded devices and of the devices made here."""
    return [raw for _, raw in samples.usb_devices()]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "ingest": ingest,
    "chain": chain,
    "policy": policy,
    "usbguard": usbguard,
    "rooms": rooms,
    "labels": labels,
    "console_query": console_query,
    "descriptors": descriptors,
}


def seeds(name: str) -> list[bytes]:
    """The seed inputs of target ``name``."""
    return SEEDS[name]()
