"""Time to build the half-year inspection report over 1,000,000 stored events.

A generated organisation — 60 secret computers, 40 cleared staff in a register of its
own — with a realistic mix of events over 2026-H2 (file accesses, many folded, some
denied; file changes and 自行解密; USB sticks and blocked devices; link violations;
meeting checks; heartbeats; unclean stops) goes straight into a SQLite store with
``SQLiteStore.append`` in big batches. The per-host chains are real (each event names
the hash of the one before it) and a signed checkpoint covers them, so the cover's
chain verification is the real work too. Bodies are built by splicing the per-event
header fields in front of pre-serialized kind templates — byte for byte the canonical
serialization, a few microseconds per event instead of a protobuf build each.

Then it times ``build_inspection`` (one streaming pass over the period, one over the
previous period, the full ``audit.verify``) and the HTML and PDF renderings.

``python -m bench.reports`` prints the figures; ``run()`` returns them for ``bench``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from baomi import chain
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.proc import BenchError
from collector import checkpoint
from collector.store.base import EventRow
from collector.store.sqlite import SQLiteStore

TARGET_S = 15.0  # seconds for the half-year inspection report over 1,000,000 events
PERIOD = "2026-H2"
HOSTS = 60
PEOPLE = 40
BATCH_ROWS = 50_000  # rows per append: one transaction each
TEMPLATES = 4000  # distinct event bodies (before the per-event header)
SEED = 7

DEPARTMENTS = ("office", "finance", "rd", "archive", "logistics")
CLEARANCES = ("核心", "重要", "一般")
PROJECTS = ("falcon", "heron", "osprey", "kestrel", "merlin", "swift", "ibis")
PROGRAMS = ("/usr/bin/wps", "/usr/bin/evince", "/usr/bin/libreoffice", "/usr/bin/cp")
DENY_REASONS = (
    "read up: clearance 1 < level 2",
    "clearance 2 < level 3",
    "outside need-to-know scope",
    "training expired 2026-05-31",
    "application /usr/bin/cp not approved for 绝密",
    "denied by rule p, role:contractor, /srv/secret/**, export, deny",
    "no rule allows",
    "status leaving",
    "unknown user uid 4242",
)
BLOCKED = (
    ("phone", "18d1", "4ee7", "Pixel 7"),
    ("storage", "0781", "5581", "SanDisk Ultra"),
    ("audio", "19f7", "0003", "RØDE Wireless GO II RX"),
    ("tethering", "12d1", "1506", "HUAWEI Mobile"),
    ("camera", "04a9", "31e6", "Canon PowerShot"),
    ("wireless", "0bda", "8179", "RTL8188EUS 802.11n"),
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def person_name(i: int) -> str:
    """Login name of generated person ``i``."""
    return f"staff{i:02d}"


def write_subjects(path: Path) -> None:
    """A register of the generated people: some lapsing training, some leavers."""
    lines = []
    for i in range(PEOPLE):
        until = "2027-06-30" if i % 9 else "2027-01-15"
        status = "left" if i == PEOPLE - 1 else ("leaving" if i == PEOPLE - 2 else "active")
        lines += [
            f"[people.{person_name(i)}]",
            f'display = "职员{i:02d}"',
            f"uid = {2000 + i}",
            f'department = "{DEPARTMENTS[i % len(DEPARTMENTS)]}"',
            f'clearance = "{CLEARANCES[i % 3]}"',
            f"trained_until = {until}",
            f'status = "{status}"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _access(rng: random.Random, deny: bool) -> events_pb2.Event:
    i = rng.randrange(PEOPLE)
    project = rng.choice(PROJECTS)
    level = rng.choice((1, 1, 2, 2, 2, 3, 0))
    k = rng.randrange(800)
    ev = events_pb2.Event(
        severity=events_pb2.SEVERITY_MEDIUM if deny else events_pb2.SEVERITY_INFO,
        file_access=events_pb2.FileAccess(
            path=f"/srv/secret/{project}/design/rev-{k % 40:03d}/section-{k:03d}.docx",
            action=rng.choice(("read", "read", "read", "write", "export")),
            uid=2000 + i,
            user=person_name(i),
            pid=rng.randrange(2000, 60000),
            executable=rng.choice(PROGRAMS),
            level=level,  # type: ignore[arg-type]
            label_id=f"LBL-{project}-{k:04d}",
            decision=events_pb2.DECISION_DENY if deny else events_pb2.DECISION_ALLOW,
            reason=rng.choice(DENY_REASONS)
            if deny
            else "allowed: clearance 3 >= level 2, in scope",
            rule=f"p, role:{project}, /srv/secret/{project}/**, read, allow",
            cmdline=f"wps /srv/secret/{project}/design/section-{k:03d}.docx",
            label_until="2031-12-31",
            label_scope=[f"dept:{DEPARTMENTS[i % len(DEPARTMENTS)]}", f"role:{project}"],
            count=rng.choice((1, 1, 1, 2, 3, 7)),
        ),
    )
    ev.file_access.first.FromMicroseconds(1_782_000_000_000_000)
    ev.file_access.last.FromMicroseconds(1_782_000_000_500_000)
    return ev


def _allowed(rng: random.Random) -> events_pb2.Event:
    return _access(rng, deny=False)


def _denied(rng: random.Random) -> events_pb2.Event:
    return _access(rng, deny=True)


def _change(rng: random.Random) -> events_pb2.Event:
    project = rng.choice(PROJECTS)
    declassified = rng.random() < 0.04
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO,
        file_change=events_pb2.FileChange(
            path=f"/srv/secret/{project}/plan-{rng.randrange(500):03d}.docx",
            change="declassified"
            if declassified
            else rng.choice(("write", "create", "rename", "delete")),
            uid=2000 + rng.randrange(PEOPLE),
            pid=rng.randrange(2000, 60000),
            level=0 if declassified else rng.choice((1, 2, 3)),  # type: ignore[arg-type]
            label_id=f"LBL-{project}-{rng.randrange(500):04d}",
        ),
    )


def _device(rng: random.Random) -> events_pb2.Event:
    serial = f"BM{rng.randrange(120):06d}"
    blocked = rng.random() < 0.15
    cls, vid, pid, name = (
        rng.choice(BLOCKED) if blocked else ("storage", "0951", "1666", "保密U盘 Kingston")
    )
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_HIGH if blocked else events_pb2.SEVERITY_INFO,
        device=events_pb2.Device(
            action=rng.choice(("add", "add", "remove")) if not blocked else "add",
            device_class=cls,
            vendor_id=vid,
            product_id=pid,
            serial=serial,
            name=name,
            descriptor_hash=hashlib.sha256(serial.encode()).hexdigest()[:43],
            port=f"1-{rng.randrange(1, 5)}",
            interfaces=":080650:",
            decision=events_pb2.DECISION_DENY if blocked else events_pb2.DECISION_ALLOW,
            rule="block by class" if blocked else f"allow serial {serial}",
        ),
    )


def _network(rng: random.Random) -> events_pb2.Event:
    violation = rng.random() < 0.2
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_CRITICAL if violation else events_pb2.SEVERITY_INFO,
        network=events_pb2.Network(
            action="default_route" if violation else "link_up",
            interface=rng.choice(("wlan0", "usb0", "enp3s0", "tun0")),
            link_kind=rng.choice(("wireless", "usb", "tun")) if violation else "ethernet",
            address="192.168.43.17/24",
            gateway="192.168.43.1",
            violation=violation,
            reason="wireless interface up on a secret computer" if violation else "",
        ),
    )


def _process(rng: random.Random) -> events_pb2.Event:
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_MEDIUM,
        process=events_pb2.Process(
            pid=rng.randrange(2000, 60000),
            name="obs",
            executable="/usr/bin/obs",
            cmdline="obs --startrecording",
            uid=2000 + rng.randrange(PEOPLE),
            reason="recording software",
        ),
    )


def _meeting(rng: random.Random) -> events_pb2.Event:
    fail = rng.random() < 0.2
    items = [
        events_pb2.CheckItem(
            id=f"C{n}",
            title=f"检查项 C{n}",
            result="fail" if fail and n == rng.choice((1, 4, 7, 12)) else "pass",
            evidence="ok",
            mandatory=True,
        )
        for n in range(1, 14)
    ]
    cleared = all(it.result == "pass" for it in items)
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO if cleared else events_pb2.SEVERITY_HIGH,
        meeting_check=events_pb2.MeetingCheck(
            room=rng.choice(("第一会议室", "保密会议室", "room-3")),
            meeting=f"M-{rng.randrange(1000):04d}",
            phase="check",
            cleared=cleared,
            items=items,
            inspector=person_name(rng.randrange(PEOPLE)),
            signature=rng.randbytes(64),
        ),
    )


def _status(rng: random.Random) -> events_pb2.Event:
    degraded = rng.random() < 0.02
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO,
        agent_status=events_pb2.AgentStatus(
            version="0.1.0",
            policy_version=rng.choice(("3f2a9c1d5e7b8a60",) * 20 + ("0000aaaabbbbcccc",)),
            sensors=[
                events_pb2.SensorHealth(name="files", state="ok"),
                events_pb2.SensorHealth(
                    name="usb",
                    state="degraded" if degraded else "ok",
                    detail="udev monitor restarted" if degraded else "",
                ),
                events_pb2.SensorHealth(name="network", state="ok"),
            ],
            spool_events=rng.randrange(100),
            spool_bytes=rng.randrange(100_000),
            state="running",
        ),
    )


def _tamper(rng: random.Random) -> events_pb2.Event:
    ev = events_pb2.Event(
        severity=events_pb2.SEVERITY_HIGH,
        tamper=events_pb2.Tamper(
            kind="unclean_stop",
            detail="the agent did not stop cleanly; nothing was enforced in the gap",
        ),
    )
    start = 1_782_000_000_000_000 + rng.randrange(10**12)
    ev.tamper.gap_start.FromMicroseconds(start)
    ev.tamper.gap_end.FromMicroseconds(start + rng.randrange(60, 3600) * 1_000_000)
    return ev


#: The event mix: (cumulative share, template builder).
MIX: tuple[tuple[float, Callable[[random.Random], events_pb2.Event]], ...] = (
    (0.70, _allowed),
    (0.78, _denied),
    (0.83, _change),
    (0.865, _device),
    (0.877, _network),
    (0.882, _process),
    (0.885, _meeting),
    (0.9995, _status),
    (1.0, _tamper),
)


def _template(rng: random.Random) -> events_pb2.Event:
    x = rng.random()
    return next(build for edge, build in MIX if x < edge)(rng)


class Chains:
    """Where every generated host's chain stands (seq and hash of its last event)."""

    def __init__(self) -> None:
        self.seqs = [0] * HOSTS
        self.prevs = [chain.GENESIS] * HOSTS


def rows(
    n: int,
    start_us: int,
    end_us: int,
    received_us: int,
    *,
    seed: int = SEED,
    chains: Chains | None = None,
) -> Iterator[list[EventRow]]:
    """``n`` events spread evenly over ``[start_us, end_us)``, chained per host from
    where ``chains`` stands (updated), in batches of ``BATCH_ROWS``."""
    rng = random.Random(seed)
    pool = []
    for _ in range(TEMPLATES):
        ev = _template(rng)
        kind = str(ev.WhichOneof("kind"))
        # Fields 5 and up, in field order: what follows the header in canonical bytes.
        pool.append((kind, int(ev.severity), ev.SerializeToString(deterministic=True)))
    hosts = [f"sec-pc-{i:03d}" for i in range(HOSTS)]
    host_fields = [_field(0x0A, h.encode()) for h in hosts]
    state = chains or Chains()
    seqs, prevs = state.seqs, state.prevs
    step = (end_us - start_us) // max(n, 1)
    picks = rng.choices(range(TEMPLATES), k=n)
    host_picks = rng.choices(range(HOSTS), k=n)
    sha256 = hashlib.sha256
    batch: list[EventRow] = []
    for i in range(n):
        h = host_picks[i]
        kind, severity, tail = pool[picks[i]]
        seqs[h] += 1
        seq = seqs[h]
        when = start_us + i * step
        seconds, micros = divmod(when, 1_000_000)
        stamp = b"\x08" + _varint(seconds) + (b"\x10" + _varint(micros * 1000) if micros else b"")
        body = (
            host_fields[h]
            + b"\x10"
            + _varint(seq)
            + _field(0x1A, stamp)
            + b"\x22\x20"
            + prevs[h]
            + tail
        )
        digest = sha256(body).digest()
        prevs[h] = digest
        batch.append(EventRow(hosts[h], seq, kind, severity, when, received_us, digest, body))
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def build_store(
    path: Path, n: int, *, previous: int, key: ed25519.Ed25519PrivateKey
) -> dict[str, float]:
    """Fill a SQLite store at ``path``: ``n`` events in PERIOD, ``previous`` before it;
    sign a checkpoint over every head. Returns timings."""
    from collector.reports.period import parse_period

    period = parse_period(PERIOD)
    before = period.previous()
    store = SQLiteStore(path)
    t0 = time.perf_counter()
    try:
        received = period.end_us + 1_000_000
        chains = Chains()  # one chain per host across both periods
        for start, end, count, seed in (
            (before.start_us, before.end_us, previous, SEED + 1),
            (period.start_us, period.end_us, n, SEED),
        ):
            if count:
                for batch in rows(count, start, end, received, seed=seed, chains=chains):
                    store.append(batch)
        # The hosts were enrolled (audit verify refuses events of hosts never enrolled).
        for host in store.heads():
            store.add_host(host, hashlib.sha256(host.encode()).digest(), received)
        # One checkpoint over the final heads, as the collector would sign after ingest
        # (Ingest.checkpoint_once): with the digest of every covered event's receive time.
        heads = store.heads()
        times = {
            host: checkpoint.received_digest(store.received_times(host, 1, seq))
            for host, (seq, _) in heads.items()
        }
        body = checkpoint.make_body(received + 1, checkpoint.FIRST_PREV, heads, times)
        store.add_checkpoint(received + 1, body, checkpoint.sign(key, body))
    finally:
        store.close()
    return {"fill_s": time.perf_counter() - t0}


def _check_canonical(path: Path) -> None:
    """The spliced bodies must be exactly what chain.canonical_bytes gives."""
    store = SQLiteStore(path)
    try:
        for row in store.chain("sec-pc-000"):
            ev = events_pb2.Event.FromString(row.body)
            if chain.canonical_bytes(ev) != row.body:
                raise AssertionError(f"generated body of seq {row.seq} is not canonical")
            if row.seq >= 50:
                break
    finally:
        store.close()


def run(events: int = 1_000_000, previous: int = 0) -> list[tuple[str, float, str]]:
    """Measure; (figure, value, unit and target) rows."""
    from collector.reports import build_inspection, render_html, render_pdf

    work = Path(tempfile.mkdtemp(prefix="baomi-bench-reports-"))
    try:
        key = ed25519.Ed25519PrivateKey.generate()
        pub = work / "signing.pub"
        pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        policies = work / "policies"
        policies.mkdir()
        write_subjects(policies / "subjects.toml")
        db = work / "events.db"
        fill = build_store(db, events, previous=previous, key=key)
        _check_canonical(db)
        print(
            f"store: {events:,} events in {PERIOD} (+{previous:,} before) in {fill['fill_s']:.1f} s"
        )

        store = SQLiteStore(db)
        try:
            t0 = time.perf_counter()
            report = build_inspection(
                store,
                PERIOD,
                policies_dir=policies,
                verify_key_path=pub,
                unit="基准测试单位",
                store_url=f"sqlite:///{db}",  # verification in a worker, as the CLI does
            )
            build_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            html = render_html(report, "zh")
            html_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            pdf = render_pdf(report, "zh")
            pdf_s = time.perf_counter() - t2
        finally:
            store.close()
        total = build_s + html_s + pdf_s
        timings = report.timings
        verified = report.meta["verification"]
        print(
            f"inspection {PERIOD}: figures {build_s:.2f} s (period pass "
            f"{timings.get('period_s', 0):.2f} s, previous period "
            f"{timings.get('previous_s', 0):.2f} s; audit.verify of {verified['events']:,} "
            f"events {verified['seconds']:.2f} s in a worker process, waited "
            f"{timings.get('verify_s', 0):.2f} s), HTML {html_s:.2f} s ({len(html):,} bytes), "
            f"PDF {pdf_s:.2f} s ({len(pdf):,} bytes); chain verification "
            f"{'OK' if verified['ok'] else 'FAILED'}"
        )
        if not verified["ok"]:  # then the report timed is not the one an officer gets
            raise BenchError(f"audit.verify failed on the generated store: {verified}")
        return [
            (f"report: half-year inspection, {events:,} events", total, f"s (<= {TARGET_S:g})"),
            ("report: figures (passes + audit.verify)", build_s, "s"),
            ("report: period pass", timings.get("period_s", 0.0), "s"),
            ("report: audit.verify (worker process)", float(verified["seconds"]), "s"),
            ("report: HTML + PDF rendering", html_s + pdf_s, "s"),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.reports``."""
    p = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="events in the period")
    p.add_argument("--previous", type=int, default=0, help="events in the period before")
    args = p.parse_args(argv)
    figures = run(args.events, args.previous)
    for name, value, unit in figures:
        print(f"{name}: {value:.2f} {unit}")
    total = figures[0][1]
    print("PASS" if total <= TARGET_S else "MISS", f"({total:.2f} s, target {TARGET_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
