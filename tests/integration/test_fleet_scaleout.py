"""The scale-out acceptance test (issue 14): three collectors on one PostgreSQL behind
HAProxy, 1,000 simulated hosts, and everything that can go wrong going wrong at once.

Everything is real and runs as it would deployed: ``baomi-collector serve`` processes
(one serving the console), Debian HAProxy in TCP mode with health checks, the session's
PostgreSQL server, and the host simulator (``python -m bench.fleet``) enrolling and
streaming over mTLS through the balancer and following the policy stream as agents do.
While the hosts stream, the checkpoint signer is SIGKILLed (another takes over) and
started again, then SIGKILLed and started once more; PostgreSQL is restarted as after a
crash; one host moves between collectors. Afterwards every event is stored exactly once,
each host's seq runs 1..N, the checkpoints form one unforked chain, ``audit verify``
passes, and a policy saved on one collector's console reached every host.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from baomi.v1 import events_pb2

from bench import balancer
from collector import checkpoint, ingest
from collector.console.auth import create_account
from collector.store import open_store
from tests.conftest import _fresh_database
from tests.integration.console.web import Client
from tests.integration.test_haproxy import CHECK_MS, DOWN_TIMEOUT_S, result_of
from tests.integration.test_scaleout import (
    Agent,
    PostgresControl,
    _assert_exactly_once,
    _enroll,
    _lease_holder,
)
from tests.procs import (
    Proc,
    Processes,
    cli,
    free_port_pair,
    init_pki,
    run_cli,
    start_collector,
    wait_for,
)

HOSTS = 1000
EVENTS = 30  # per host: with the 1,000 hosts, enough to span every fault below
RATE = 0.4  # events/s per host: the run lasts about EVENTS / RATE = 75 s
FLEET_TIMEOUT_S = 420.0  # seconds the simulator may take in all
PROGRESS_TIMEOUT_S = 180.0  # seconds to wait for the fleet to reach a stage of the run
PASSWORD = "correct-horse-battery"  # noqa: S105 - a test account's
EXTRA_RULE = "p, role:staff, /srv/secret/shared/**, write, deny\n"
POLICIES = Path(__file__).parents[2] / "policies"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not any(Path(p).exists() for p in ("/usr/sbin/haproxy", "/usr/bin/haproxy")),
        reason="needs Debian haproxy (apt-get install haproxy; make test installs it)",
    ),
]


@pytest.fixture
def database(postgres_server: str) -> Iterator[str]:
    """A fresh database the three collectors share."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Daemons of this test; whatever still runs is SIGKILLed by pid in teardown."""
    with Processes(tmp_path / "logs") as group:
        yield group


class Site:
    """Three collectors on one database behind HAProxy; the last serves the console."""

    def __init__(self, tmp_path: Path, procs: Processes, url: str, pki_dir: Path) -> None:
        self.procs, self.url, self.pki_dir = procs, url, pki_dir
        self.names = ["c1", "c2", "c3"]
        self.ports = {n: free_port_pair() for n in self.names}
        self.health_ports = {n: free_port_pair() for n in self.names}
        self.console_port = free_port_pair()
        self.collectors: dict[str, Proc] = {}
        for name in self.names:  # c1 asks first, so it signs the first checkpoints
            self.start(name)
        self.agents_port = free_port_pair()
        config, self.stats = tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"
        backends = [
            balancer.Backend(
                n, self.address(n), f"127.0.0.1:{self.ports[n] + 1}", self.health_ports[n]
            )
            for n in self.names
        ]
        balancer.write_config(
            config,
            agents_port=self.agents_port,
            enroll_port=self.agents_port + 1,
            backends=backends,
            stats_socket=self.stats,
            check_ms=CHECK_MS,
        )
        balancer.check_config(config)
        self.haproxy = procs.start("haproxy", balancer.command(config))
        self.wait_status({n: "UP" for n in self.names})

    def address(self, name: str) -> str:
        """The collector's own mTLS agent address (not the balancer's)."""
        return f"127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> None:
        """``serve`` with the shipped policies (stored as the first version by whichever
        collector finds the store empty); the last one also serves the console."""
        extra = ["--health-port", str(self.health_ports[name]), "--policies", str(POLICIES)]
        if name == self.names[-1]:
            extra += ["--console", f"127.0.0.1:{self.console_port}"]
        self.collectors[name] = start_collector(
            self.procs,
            store_url=self.url,
            pki_dir=self.pki_dir,
            port=self.ports[name],
            name=name,
            extra_args=extra,
        )

    def status(self) -> dict[str, str]:
        """Each collector's state in HAProxy."""
        return balancer.server_status(self.stats)

    def wait_status(self, want: dict[str, str]) -> None:
        """Until HAProxy sees the collectors in the states ``want`` names."""
        wait_for(
            lambda: (
                self.stats.exists()
                and {n: s for n, s in self.status().items() if n in want} == want
            ),
            f"HAProxy to see {want}",
            timeout=DOWN_TIMEOUT_S,
            watch=[self.haproxy],
        )

    def signer(self) -> str:
        """The collector holding the checkpoint lease: the process whose database
        connection is the lease holder's backend."""
        # Between two checkpoints (1 s) the lease may be free for a moment.
        wait_for(
            lambda: _lease_holder(self.url, ingest.CHECKPOINT_LEASE) is not None,
            "a collector to hold the checkpoint lease",
            timeout=DOWN_TIMEOUT_S,
        )
        holder = _lease_holder(self.url, ingest.CHECKPOINT_LEASE)
        assert holder is not None, "the checkpoint lease was given up at once"
        with psycopg.connect(self.url, autocommit=True) as db:
            row = db.execute(
                "SELECT client_port FROM pg_stat_activity WHERE pid = %s", (holder,)
            ).fetchone()
        assert row is not None
        for name, proc in self.collectors.items():
            if not proc.alive():
                continue
            ports = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp")}
            if row[0] in ports:
                return name
        raise AssertionError(f"no collector process owns the lease holder's port {row[0]}")

    def kill(self, name: str) -> None:
        """SIGKILL; HAProxy takes it out."""
        self.collectors[name].kill()
        self.wait_status({name: "DOWN"})

    def restart(self, name: str) -> None:
        """Start it again; HAProxy takes it back."""
        self.start(name)
        self.wait_status({name: "UP"})


def _query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(sql, args).fetchall()


def _sim_events(url: str) -> int:
    return int(_query(url, "SELECT count(*) FROM events WHERE host_id LIKE 'sim-%%'")[0][0])


def _hosts_with_policy(url: str, version: str) -> list[str]:
    """The simulated host of each stored ``policy_applied`` ok event for ``version``."""
    rows = _query(
        url,
        "SELECT host_id, body FROM events WHERE kind = 'policy_applied' AND host_id LIKE 'sim-%%'",
    )
    hosts = []
    for host_id, body in rows:
        applied = events_pb2.Event.FromString(bytes(body)).policy_applied
        if applied.version == version and applied.ok:
            hosts.append(host_id)
    return sorted(hosts)


def _wait_progress(check: Any, what: str, sim: Proc) -> None:
    wait_for(check, what, timeout=PROGRESS_TIMEOUT_S, watch=[sim], interval=0.5)


def _publish_on_console(site: Site) -> str:
    """Log in to the console as the secadmin and save the policy with one more rule, as
    the policy page's form does; the new version's name."""
    store = open_store(site.url)
    try:
        newest = store.policy_version()
    finally:
        store.close()
    assert newest is not None
    sue = Client(f"http://127.0.0.1:{site.console_port}")
    assert sue.login("sue", PASSWORD).status == 303
    form = {f"file:{n}": d.decode() for n, d in newest.files.items()}
    form["file:policy.csv"] += EXTRA_RULE
    resp = sue.post("/policy/save", form)
    assert resp.status in (200, 303), resp.text
    store = open_store(site.url)
    try:
        saved = store.policy_version()
    finally:
        store.close()
    # Greater, not next: a PostgreSQL crash skips sequence numbers (it logs them ahead).
    assert saved is not None and saved.number > newest.number, resp.text
    assert saved.files["policy.csv"].decode().endswith(EXTRA_RULE)
    return saved.version


def _assert_one_checkpoint_chain(url: str) -> int:
    """Each checkpoint names the one before it, and no two the same: one signer at a
    time. Returns how many there are."""
    store = open_store(url)
    try:
        rows = store.checkpoints()
    finally:
        store.close()
    prevs = [json.loads(r.body)["prev"] for r in rows]
    assert len(set(prevs)) == len(prevs), "two checkpoints were signed on one predecessor"
    for before, row, prev in zip(rows, rows[1:], prevs[1:], strict=False):
        assert prev == checkpoint.digest(before), f"checkpoint {row.id} forks the chain"
    return len(rows)


def test_a_thousand_hosts_lose_nothing_while_collectors_and_postgresql_fail(
    tmp_path: Path, procs: Processes, database: str, postgres_server: str
) -> None:
    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    store = open_store(database)
    try:
        create_account(store, "sue", role="secadmin", by="cli:test", password=PASSWORD)
    finally:
        store.close()
    site = Site(tmp_path, procs, database, pki_dir)
    started = time.monotonic()
    sim = procs.start(
        "fleet",
        [
            sys.executable, "-m", "bench.fleet", "--hosts", str(HOSTS),
            "--events", str(EVENTS), "--rate", str(RATE), "--batch", "10",
            "--collector", f"127.0.0.1:{site.agents_port}",
            "--enroll", f"127.0.0.1:{site.agents_port + 1}",
            "--ca", str(pki_dir / "ca.pem"), "--store", database,
            "--policy-versions", "2", "--deadline", str(FLEET_TIMEOUT_S - 60), "--verify",
        ],
    )  # fmt: skip
    total = HOSTS * EVENTS
    _wait_progress(lambda: _sim_events(database) >= total // 6, "the fleet to stream", sim)

    # The checkpoint signer dies; another takes over; it comes back.
    victim = site.signer()
    site.kill(victim)
    wait_for(
        lambda: site.signer() != victim,
        "another collector to take the checkpoint lease over",
        timeout=DOWN_TIMEOUT_S,
    )
    site.restart(victim)

    # A host moves: its stream is cut at one collector, it goes on at another.
    store = open_store(database)
    try:
        mover = Agent(_enroll(store, pki_dir, f"127.0.0.1:{site.ports['c1'] + 1}", "moved-01"), 40)
    finally:
        store.close()
    mover.session(site.address("c1"), batch_events=5, cut_after=3)
    assert mover.acked == 15
    mover.session(site.address("c2"), batch_events=5)
    assert mover.acked == 40

    # PostgreSQL goes away as in a crash and comes back.
    server = PostgresControl(postgres_server)
    server.stop()
    try:
        time.sleep(3)  # long enough for every collector to notice
    finally:
        server.start()

    _wait_progress(lambda: _sim_events(database) >= total // 2, "the fleet to go on", sim)
    # The same collector dies again (signing or not by now) and comes back.
    signing_again = site.signer() == victim
    site.kill(victim)
    site.restart(victim)
    checkpoints_before_publish = _assert_one_checkpoint_chain(database)

    # Every host follows the policy stream: the first version reached each at connect;
    # now a secadmin saves a new one on the console of one collector.
    store = open_store(database)
    try:
        first_version = store.policy_versions(1)[0].version
    finally:
        store.close()
    _wait_progress(
        lambda: len(set(_hosts_with_policy(database, first_version))) == HOSTS,
        "every host to report the first policy",
        sim,
    )
    version = _publish_on_console(site)

    assert sim.popen.wait(timeout=FLEET_TIMEOUT_S - (time.monotonic() - started)) == 0, sim.output()
    result = result_of(sim.output())
    shown = {k: result[k] for k in ("seconds", "events", "acked", "reconnects", "errors")}
    print(
        f"fleet run: {time.monotonic() - started:.0f} s; {victim} killed twice (signing "
        f"then, {'and' if signing_again else 'not'} again); {json.dumps(shown)}"
    )
    assert result["verified"] == {"hosts_ok": HOSTS, "bad": [], "exact": True}, result
    assert result["acked"] == result["events"] == total + result["policy_events"]
    for bad in ("chain_mismatch", "collector_lost_events", "unfinished", "policy_versions_missing"):
        assert bad not in result["errors"], result
    assert result["policy"] == {first_version: HOSTS, version: HOSTS}
    assert result["reconnects"] > 0  # the killed collectors' hosts did move

    # The store, read directly: every host's seq 1..N once, N its events and reports.
    per_host = _query(
        database,
        "SELECT host_id, count(*), count(DISTINCT seq), min(seq), max(seq) FROM events "
        "WHERE host_id LIKE 'sim-%%' GROUP BY host_id",
    )
    assert len(per_host) == HOSTS
    bad_hosts = [r for r in per_host if not (r[1] == r[2] == r[4] >= EVENTS + 2 and r[3] == 1)]
    assert bad_hosts == []
    assert sum(r[1] for r in per_host) == result["events"]
    # 1,000 policy_applied events of the console's version: one from each host.
    assert _hosts_with_policy(database, version) == [f"sim-{i:05d}" for i in range(HOSTS)]

    store = open_store(database)
    try:
        _assert_exactly_once(store, mover)
    finally:
        store.close()

    for name in site.names:
        assert site.collectors[name].stop() == 0, site.collectors[name].output()
    assert _assert_one_checkpoint_chain(database) > checkpoints_before_publish
    run_cli([cli("baomi-collector"), "audit", "verify", "--store", database, "--pki", str(pki_dir)])
