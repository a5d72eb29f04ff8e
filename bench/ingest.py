"""Durable ingest over concurrent mTLS streams, beside a raw SQLite insert of the same rows.

The collector runs in its own process (``bench.serve``) on a fresh SQLite store, the
load in another (``bench.loadgen``), so event creation does not share the collector's
process; on a small machine they still share its cores.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import events
from bench.proc import BenchError, Child
from collector import pki
from collector.ingest import MAX_COMMIT_ROWS, now_us
from collector.server import create_token
from collector.store.base import EventRow
from collector.store.sqlite import SQLiteStore

AGENT_HOST = "bench-agent"


@dataclass
class Setup:
    """A fresh PKI and store with the load hosts enrolled."""

    workdir: Path
    pki_dir: Path
    store_path: Path
    hosts_dir: Path
    agent_token: str


@dataclass
class LoadResult:
    """What one ingest run measured."""

    events: int
    seconds: float
    rate: float
    wire_mb_per_s: float
    collector_cpu_s: float
    loadgen_cpu_s: float
    connect_s: float


def _host_certificate(authority: pki.Authority, host_id: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
        .sign(key, hashes.SHA256())
    )
    cert = authority.issue_host_certificate(csr.public_bytes(serialization.Encoding.PEM), host_id)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert


def setup(workdir: Path, hosts: int) -> Setup:
    """Create the PKI, the store, the load hosts' certificates and the agent's token."""
    pki_dir, hosts_dir = workdir / "pki", workdir / "hosts"
    hosts_dir.mkdir(parents=True)
    authority = pki.init_authority(pki_dir, ["localhost", "127.0.0.1"])
    store = SQLiteStore(workdir / "collector.db")
    try:
        for h in range(hosts):
            host_id = events.host_name(h)
            key_pem, cert = _host_certificate(authority, host_id)
            (hosts_dir / f"{host_id}.key").write_bytes(key_pem)
            (hosts_dir / f"{host_id}.pem").write_bytes(cert)
            store.add_host(host_id, pki.fingerprint(cert), now_us())
        token = create_token(store, AGENT_HOST)
    finally:
        store.close()
    return Setup(workdir, pki_dir, workdir / "collector.db", hosts_dir, token)


def raw_sqlite(path: Path, rows: list[EventRow]) -> float:
    """Events per second of a plain ``executemany`` into the store's own schema, with its
    PRAGMAs (WAL, synchronous=FULL), one transaction per group commit's worth of rows."""
    SQLiteStore(path).close()  # the schema, exactly as the collector creates it
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        params = [
            (r.host_id, r.seq, r.kind, r.severity, r.event_time_us, r.received_us, r.hash, r.body)
            for r in rows
        ]
        start = time.perf_counter()
        for i in range(0, len(params), MAX_COMMIT_ROWS):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO events (host_id, seq, kind, severity, event_time, received_at, "
                "hash, body) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (host_id, seq) DO NOTHING",
                params[i : i + MAX_COMMIT_ROWS],
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        db.close()
    if stored != len(rows):
        raise BenchError(f"raw SQLite stored {stored} of {len(rows)} rows")
    return len(rows) / elapsed


def store_append(path: Path, rows: list[EventRow]) -> float:
    """Events per second of ``SQLiteStore.append`` alone, in group commits of the same size:
    the store's ceiling, without gRPC, TLS and the chain check."""
    store = SQLiteStore(path)
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), MAX_COMMIT_ROWS):
            store.append(rows[i : i + MAX_COMMIT_ROWS])
        elapsed = time.perf_counter() - start
        stored = store.count()
    finally:
        store.close()
    if stored != len(rows):
        raise BenchError(f"SQLiteStore.append stored {stored} of {len(rows)} rows")
    return len(rows) / elapsed


def expected_heads(rows: list[EventRow]) -> dict[str, tuple[int, bytes]]:
    """Each host's last (seq, hash) among ``rows``."""
    heads: dict[str, tuple[int, bytes]] = {}
    for r in rows:
        if r.seq > heads.get(r.host_id, (0, b""))[0]:
            heads[r.host_id] = (r.seq, r.hash)
    return heads


def start_collector(s: Setup) -> tuple[Child, dict[str, int]]:
    """A collector process on ``s``'s store; its child handle and bound ports."""
    child = Child(
        "collector",
        "bench.serve",
        ["--store", str(s.store_path), "--pki", str(s.pki_dir)],
        s.workdir,
    )
    try:
        ports: dict[str, int] = child.expect(timeout=60)["ports"]
    except BenchError:
        child.stop()
        raise
    return child, ports


def run_load(
    s: Setup,
    collector: Child,
    port: int,
    *,
    hosts: int,
    events_per_host: int,
    batch: int,
    window: int,
) -> LoadResult:
    """Drive the collector from a load-generator process and time it."""
    gen = Child(
        "loadgen",
        "bench.loadgen",
        [
            "--address",
            f"127.0.0.1:{port}",
            "--ca",
            str(s.pki_dir / "ca.pem"),
            "--hosts-dir",
            str(s.hosts_dir),
            "--hosts",
            str(hosts),
            "--events",
            str(events_per_host),
            "--batch",
            str(batch),
            "--window",
            str(window),
        ],
        s.workdir,
    )
    try:
        ready = gen.expect(timeout=300)
        cpu = psutil.Process(collector.pid)
        before = cpu.cpu_times()
        gen.send("go")
        result = gen.expect(timeout=600)
        after = cpu.cpu_times()
        if gen.proc.wait(60) != 0:
            raise BenchError(f"loadgen exited with {gen.proc.returncode}{gen.tail()}")
    finally:
        gen.stop()
    return LoadResult(
        events=int(result["events"]),
        seconds=float(result["seconds"]),
        rate=float(result["events_per_s"]),
        wire_mb_per_s=float(result["wire_mb_per_s"]),
        collector_cpu_s=(after.user + after.system) - (before.user + before.system),
        loadgen_cpu_s=float(result["cpu_s"]),
        connect_s=float(ready["connect_s"]),
    )


def check_stored(store_path: Path, heads: dict[str, tuple[int, bytes]]) -> tuple[int, list[str]]:
    """How many events the store holds, and the hosts whose stored head is not the hash
    of the last event sent."""
    store = SQLiteStore(store_path)
    try:
        stored = store.count()
        have = store.heads()
    finally:
        store.close()
    return stored, sorted(h for h, head in heads.items() if have.get(h) != head)
