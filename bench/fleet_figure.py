"""The fleet figure: the host simulator (:mod:`bench.fleet`) against collectors behind
HAProxy (:mod:`bench.balancer`) on a throwaway PostgreSQL, beside a raw PostgreSQL
``COPY`` of the same rows into the same schema, measured in the same run.

Every part is real and in its own processes: PostgreSQL, each ``baomi-collector serve``,
HAProxy, and the simulator's workers. The collectors' RSS is read with no host
connected and again with every host connected, before any event is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import balancer, fleet
from bench.pg import Cluster
from bench.proc import BenchError, Child
from collector import pki
from collector.ingest import MAX_COMMIT_ROWS, now_us, to_row
from collector.store.base import EventRow
from collector.store.postgres import PostgresStore

HOSTS = 1000  # simulated hosts
EVENTS = 60  # events per host
START_TIMEOUT_S = 60.0  # seconds a collector may take to answer its health port
CONNECT_TIMEOUT_S = 300.0  # seconds to enrol and connect every host
RUN_TIMEOUT_S = 300.0  # seconds the streaming may take
MB = 1024 * 1024


@dataclass(frozen=True)
class FleetFigures:
    """What one fleet run measured."""

    collectors: int
    hosts: int
    events: int
    rate: float  # events/s acknowledged, first send to last Ack
    raw_copy_rate: float  # events/s of a raw COPY of the same rows
    ack_p50_ms: float
    ack_p99_ms: float
    rss_idle_mb: float  # all collectors, no host connected
    rss_per_1000_mb: float  # all collectors: added RSS per 1,000 connected hosts
    errors: int
    reconnects: int
    exact: bool  # every host's seq 1..N stored exactly once
    enroll_s: float
    connect_s: float


def same_rows(hosts: int, events: int) -> list[EventRow]:
    """The rows the collectors will store: each simulated host's chain as the simulator
    makes it (meeting checks signed with one throwaway key: same kinds, same sizes)."""
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    received = now_us()
    rows = []
    for index, name in enumerate(fleet.host_names("sim-", hosts)):
        chain = fleet.HostChain(name, index, events, key)
        chain.make(events)
        for _, body in chain.after(0, events):
            ev = events_pb2.Event.FromString(body)
            rows.append(to_row(ev, ev.WhichOneof("kind") or "", received, body))
    return rows


def raw_copy(url: str, rows: list[EventRow]) -> float:
    """Events/s of a plain ``COPY`` into the store's own schema, one transaction per group
    commit's worth of rows (as the collector commits)."""
    PostgresStore(url).close()  # the schema, exactly as the collector creates it
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for i in range(0, len(rows), MAX_COMMIT_ROWS):
            with conn.cursor().copy(
                "COPY events (host_id, seq, kind, severity, event_time, received_at, hash, "
                "body) FROM STDIN"
            ) as copy:
                for r in rows[i : i + MAX_COMMIT_ROWS]:
                    copy.write_row(
                        (
                            r.host_id, r.seq, r.kind, r.severity, r.event_time_us,
                            r.received_us, r.hash, r.body,
                        )
                    )  # fmt: skip
            conn.commit()
        elapsed = time.perf_counter() - start
        stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    if stored is None or stored[0] != len(rows):
        raise BenchError(f"raw COPY stored {stored} of {len(rows)} rows")
    return len(rows) / elapsed


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class _Collector:
    """``baomi-collector serve`` in its own process, output to a log."""

    def __init__(self, workdir: Path, name: str, store_url: str, pki_dir: Path) -> None:
        self.name = name
        agents, enroll, self.health_port = _free_ports(3)
        self.backend = balancer.Backend(
            name, f"127.0.0.1:{agents}", f"127.0.0.1:{enroll}", self.health_port
        )
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "collector.cli", "serve", "--store", store_url,
                    "--pki", str(pki_dir), "--listen", self.backend.agents,
                    "--enroll-listen", self.backend.enroll,
                    "--health-port", str(self.health_port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def wait_healthy(self) -> None:
        end = time.monotonic() + START_TIMEOUT_S
        while not _healthy(self.health_port):
            if self.proc.poll() is not None or time.monotonic() > end:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.name} did not become healthy:\n{tail}")
            time.sleep(0.1)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def default_collector_counts() -> list[int]:
    """One collector, and three sharing one PostgreSQL behind HAProxy."""
    return [1, 3]


def measure(
    workdir: Path, *, collectors: int = 1, hosts: int = HOSTS, events: int = EVENTS
) -> FleetFigures:
    """Run the fleet once; every process started here is stopped before it returns."""
    cluster = Cluster()
    running: list[_Collector] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        rows = same_rows(hosts, events)
        raw = raw_copy(cluster.database("raw_copy"), rows)
        del rows
        store_url = cluster.database("fleet")
        pki_dir = workdir / "fleet-pki"
        pki.init_authority(pki_dir, ["localhost", "127.0.0.1"])
        PostgresStore(store_url).close()  # the schema once, before collectors race to it
        running = [
            _Collector(workdir, f"collector-{i + 1}", store_url, pki_dir) for i in range(collectors)
        ]
        for c in running:
            c.wait_healthy()
        agents_port, enroll_port = _free_ports(2)
        config, stats = workdir / "haproxy.cfg", workdir / "haproxy.sock"
        balancer.write_config(
            config,
            agents_port=agents_port,
            enroll_port=enroll_port,
            backends=[c.backend for c in running],
            stats_socket=stats,
            check_ms=1000,
        )
        with (workdir / "haproxy.log").open("wb") as out:
            haproxy = subprocess.Popen(
                balancer.command(config), stdout=out, stderr=subprocess.STDOUT
            )
        _wait_up(stats, haproxy)
        rss_idle = sum(c.rss() for c in running)
        sim = Child(
            "fleet",
            "bench.fleet",
            [
                "--hosts", str(hosts), "--events", str(events),
                "--collector", f"127.0.0.1:{agents_port}",
                "--enroll", f"127.0.0.1:{enroll_port}",
                "--ca", str(pki_dir / "ca.pem"), "--store", store_url,
                "--verify", "--hold",
            ],
            workdir,
        )  # fmt: skip
        try:
            connected = sim.expect(CONNECT_TIMEOUT_S)["connected"]
            rss_connected = sum(c.rss() for c in running)
            sim.send("go")
            result = sim.expect(RUN_TIMEOUT_S)
            (workdir / "fleet-result.json").write_text(json.dumps(result, indent=1))
        finally:
            sim.stop()
        if connected != hosts:
            raise BenchError(f"only {connected} of {hosts} hosts connected{sim.tail()}")
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(30)
        for c in running:
            c.stop()
        cluster.stop()
    return FleetFigures(
        collectors=collectors,
        hosts=hosts,
        events=int(result["events"]),
        rate=float(result["events_per_s"]),
        raw_copy_rate=raw,
        ack_p50_ms=float(result["ack_p50_ms"]),
        ack_p99_ms=float(result["ack_p99_ms"]),
        rss_idle_mb=rss_idle / MB,
        rss_per_1000_mb=(rss_connected - rss_idle) / MB * 1000 / hosts,
        errors=sum(result["errors"].values()),
        reconnects=int(result["reconnects"]),
        exact=bool(result["verified"]["exact"]) and result["acked"] == result["events"],
        enroll_s=float(result["enroll_s"]),
        connect_s=float(result["connect_s"]),
    )


def _wait_up(stats: Path, haproxy: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + START_TIMEOUT_S
    while True:
        if haproxy.poll() is not None:
            raise BenchError(f"haproxy exited with {haproxy.returncode}; see haproxy.log")
        try:
            if stats.exists() and set(balancer.server_status(stats).values()) == {"UP"}:
                return
        except OSError:
            pass
        if time.monotonic() > end:
            raise BenchError("HAProxy did not see the collectors UP")
        time.sleep(0.1)


def describe(f: FleetFigures) -> str:
    """One line for the log."""
    return json.dumps(f.__dict__)
