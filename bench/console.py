"""Events-page query time of the console over 1,000,000 stored events (SQLite).

A temporary store is filled with a month of generated events from 50 hosts (bulk
``executemany``, with the console's indexes in place), then each kind of events-page
request is timed through the console's own search (``collector.console.eventview``),
which includes decoding the 100 rows shown: no filter, one host, one kind, a minimum
severity, a user, a path fragment, one day, the next page, and the overview's
violations chart. Random parameters per repetition.

``python -m bench.console`` prints the figures; ``run()`` returns them for ``bench``.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

from baomi.v1 import events_pb2

from collector.console.eventview import VIOLATION, Filters, search
from collector.store.sqlite import SQLiteStore

EVENTS = 1_000_000
HOSTS = 50
DAYS = 30
REPEAT = 40  # timed requests per kind of query
P95_TARGET_MS = 300.0
START_US = 1_790_000_000 * 1_000_000  # a fixed month in 2026, so runs compare
USERS = [f"user{i:03d}" for i in range(200)]
DEPTS = ("finance", "rd", "office", "archive", "hr")
TZ = ZoneInfo("Asia/Shanghai")
WORST = "path text found only outside paths (worst case)"

# kind, share of events, severity weights (info, low, medium, high, critical)
MIX: list[tuple[str, float, tuple[float, ...]]] = [
    ("file_access", 0.70, (0.86, 0.04, 0.08, 0.015, 0.005)),
    ("agent_status", 0.15, (1, 0, 0, 0, 0)),
    ("file_change", 0.06, (0.9, 0.1, 0, 0, 0)),
    ("process", 0.03, (0.5, 0.2, 0.2, 0.1, 0)),
    ("device", 0.02, (0.3, 0, 0.5, 0.15, 0.05)),
    ("network", 0.02, (0.6, 0, 0.2, 0.15, 0.05)),
    ("policy_applied", 0.01, (0.95, 0, 0, 0.05, 0)),
    ("meeting_check", 0.005, (0.7, 0, 0.2, 0.1, 0)),
    ("tamper", 0.005, (0, 0, 0, 0.8, 0.2)),
]


def _path(rng: random.Random) -> str:
    return f"/srv/secret/{rng.choice(DEPTS)}/{rng.randrange(10_000):05d}-report.docx"


def _event(rng: random.Random, *, kind: str, host: str, seq: int, t_us: int, sev: int) -> bytes:
    ev = events_pb2.Event(host_id=host, seq=seq, prev_hash=b"\0" * 32, severity=sev)  # type: ignore[arg-type]
    ev.time.FromMicroseconds(t_us)
    if kind == "file_access":
        ev.file_access.path = _path(rng)
        ev.file_access.action = rng.choice(("read", "write", "execute"))
        ev.file_access.user = rng.choice(USERS)
        ev.file_access.uid = 1000 + rng.randrange(200)
        ev.file_access.decision = (
            events_pb2.DECISION_DENY if sev >= VIOLATION else events_pb2.DECISION_ALLOW
        )
        ev.file_access.executable = "/usr/bin/wps"
        ev.file_access.reason = "clearance below the file's level" if sev >= VIOLATION else ""
    elif kind == "agent_status":
        ev.agent_status.state = "running"
        ev.agent_status.version = "0.1.0"
        ev.agent_status.policy_version = "d71e3a6e94efd9e5"
    elif kind == "file_change":
        ev.file_change.path = _path(rng)
        ev.file_change.change = "write"
    elif kind == "process":
        ev.process.name = "ffmpeg"
        ev.process.executable = "/usr/bin/ffmpeg"
        ev.process.reason = "recording software"
    elif kind == "device":
        ev.device.action = "add"
        ev.device.device_class = "storage"
        ev.device.vendor_id, ev.device.product_id = "0781", "5567"
        ev.device.serial = f"SN{rng.randrange(500):06d}"
        ev.device.name = "Cruzer Blade"
        ev.device.decision = events_pb2.DECISION_DENY
    elif kind == "network":
        ev.network.action = "link_up"
        ev.network.interface = "wlan0"
        ev.network.violation = sev >= VIOLATION
    elif kind == "policy_applied":
        ev.policy_applied.version = "d71e3a6e94efd9e5"
        ev.policy_applied.ok = True
    elif kind == "meeting_check":
        ev.meeting_check.room = "301"
        ev.meeting_check.meeting = "weekly"
        ev.meeting_check.phase = "check"
    else:
        ev.tamper.kind = "unclean_stop"
    return ev.SerializeToString(deterministic=True)


def _rows(rng: random.Random) -> Iterator[tuple[object, ...]]:
    kinds = [k for k, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    sev_weights = {k: s for k, _, s in MIX}
    seqs = dict.fromkeys((f"ws-{i:03d}" for i in range(HOSTS)), 0)
    hosts = list(seqs)
    step = DAYS * 86_400 * 1_000_000 // EVENTS
    for i in range(EVENTS):
        host = hosts[rng.randrange(HOSTS)]
        seqs[host] += 1
        kind = rng.choices(kinds, weights)[0]
        sev = rng.choices((1, 2, 3, 4, 5), sev_weights[kind])[0]
        t_us = START_US + i * step + rng.randrange(step)
        body = _event(rng, kind=kind, host=host, seq=seqs[host], t_us=t_us, sev=sev)
        yield (
            host,
            seqs[host],
            kind,
            sev,
            t_us,
            t_us + 50_000,
            hashlib.sha256(body).digest(),
            body,
        )


def fill(path: Path, seed: int = 7) -> float:
    """Create the store and its 1,000,000 events; seconds it took."""
    SQLiteStore(path).close()  # the schema, console indexes included
    t0 = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # a throwaway store: durability is not measured
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO events (host_id, seq, kind, severity, event_time, received_at, hash, body) "
        "VALUES (?,?,?,?,?,?,?,?)",
        _rows(random.Random(seed)),
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - t0


def _day(rng: random.Random) -> str:
    day = rng.randrange(DAYS)
    t = time.localtime((START_US // 1_000_000) + day * 86_400)
    return time.strftime("%Y-%m-%d", t)


def _queries(store: SQLiteStore) -> dict[str, Callable[[random.Random], object]]:
    def page(make: Callable[[random.Random], Filters]) -> Callable[[random.Random], object]:
        return lambda rng: search(store, make(rng), TZ)

    def next_page(rng: random.Random) -> object:
        first = search(store, Filters(host=f"ws-{rng.randrange(HOSTS):03d}"), TZ)
        return search(store, Filters(), TZ, before=first.next_before)

    def chart(rng: random.Random) -> object:
        end = START_US + DAYS * 86_400 * 1_000_000
        return store.severity_counts(end - 14 * 86_400 * 1_000_000, 86_400 * 1_000_000, VIOLATION)

    return {
        "no filter": page(lambda rng: Filters()),
        "host": page(lambda rng: Filters(host=f"ws-{rng.randrange(HOSTS):03d}")),
        "kind": page(
            lambda rng: Filters(kind=rng.choice(("device", "network", "tamper", "file_change")))
        ),
        "severity >= high": page(lambda rng: Filters(severity=rng.choice(("high", "critical")))),
        "host + kind + severity": page(
            lambda rng: Filters(
                host=f"ws-{rng.randrange(HOSTS):03d}", kind="file_access", severity="medium"
            )
        ),
        "user": page(lambda rng: Filters(user=rng.choice(USERS))),
        "path fragment": page(lambda rng: Filters(path=f"/{rng.randrange(10_000):05d}-")),
        "one day": page(lambda rng: Filters(since=(d := _day(rng)), until=d + "T23:59")),
        "next page": next_page,
        "overview chart (14 days)": chart,
        # Not an events-page figure: the worst a user can ask for, text that is in many
        # events but never where the filter looks, so the search gives up after
        # SCAN_ROWS candidates (and says so).
        WORST: page(lambda rng: Filters(path=rng.choice(("running", "d71e3a6e")))),
    }


def run(keep: Path | None = None) -> list[tuple[str, float, str]]:
    """Measure; (figure, value, unit and target) rows."""
    work = Path(tempfile.mkdtemp(prefix="baomi-bench-console-"))
    try:
        path = (keep or work) / "console.db"
        fill_s = 0.0 if path.exists() else fill(path)
        store = SQLiteStore(path)
        rng = random.Random(11)
        rows: list[tuple[str, float, str]] = [
            ("console: events stored", float(store.count()), f"events, {HOSTS} hosts, {DAYS} days"),
            ("console: fill store (executemany)", fill_s, "s"),
        ]
        every: list[float] = []
        for name, query in _queries(store).items():
            query(rng)  # warm the page cache once, as a console in use has it
            times = []
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                query(rng)
                times.append((time.perf_counter() - t0) * 1e3)
            if name != WORST:
                every.extend(times)
            p50, p95 = _p(times, 50), _p(times, 95)
            rows.append((f"console: {name} p50 / p95", p95, f"ms p95 (p50 {p50:.1f} ms)"))
        store.close()
        rows.insert(2, ("console: events page p50", _p(every, 50), "ms"))
        rows.insert(
            3, ("console: events page p95", _p(every, 95), f"ms (target <= {P95_TARGET_MS:.0f})")
        )
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _p(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def main() -> int:
    """Print the figures (``--keep DIR`` reuses a filled store between runs)."""
    keep = Path(sys.argv[sys.argv.index("--keep") + 1]) if "--keep" in sys.argv else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    rows = run(keep)
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:10.1f}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
