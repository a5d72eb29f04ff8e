"""Collectors behind a real HAProxy on loopback (TCP mode, ``GET /health`` checks), with
the host simulator (``bench.fleet``) and the real CLIs as subprocesses."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from baomi.v1 import events_pb2

from bench import balancer
from tests.conftest import _fresh_database
from tests.procs import (
    Proc,
    Processes,
    cli,
    create_token,
    free_port,
    free_port_pair,
    init_pki,
    run_cli,
    start_collector,
    wait_for,
)

CHECK_MS = 200  # HAProxy health-check interval here (the shipped file: 2 s)
DOWN_TIMEOUT_S = 15.0  # seconds for a killed collector to be marked DOWN
FLEET_TIMEOUT_S = 300.0  # seconds the simulator may take in all
SHIPPED = Path(__file__).parents[2] / "deploy" / "haproxy" / "haproxy.cfg"

pytestmark = pytest.mark.skipif(
    not any(Path(p).exists() for p in ("/usr/sbin/haproxy", "/usr/bin/haproxy")),
    reason="needs Debian haproxy (apt-get install haproxy; make test installs it)",
)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Daemons of this test; whatever still runs is SIGKILLed by pid in teardown."""
    with Processes(tmp_path / "logs") as group:
        yield group


@dataclass
class Site:
    """Collectors on one store behind HAProxy."""

    pki_dir: Path
    store_url: str
    agents_port: int  # HAProxy's
    enroll_port: int  # HAProxy's
    stats: Path
    collectors: dict[str, Proc]
    health_ports: dict[str, int]
    haproxy: Proc

    @property
    def ca(self) -> Path:
        """The collectors' CA certificate."""
        return self.pki_dir / "ca.pem"

    def status(self) -> dict[str, str]:
        """Each collector's state in HAProxy."""
        return balancer.server_status(self.stats)


def start_site(
    tmp_path: Path, procs: Processes, store_url: str, names: list[str], pki_dir: Path
) -> Site:
    """``serve --health-port`` for each name, HAProxy in front, every collector UP."""
    backends, collectors, health = [], {}, {}
    for name in names:
        port, health_port = free_port_pair(), free_port()
        collectors[name] = start_collector(
            procs,
            store_url=store_url,
            pki_dir=pki_dir,
            port=port,
            name=name,
            extra_args=["--health-port", str(health_port)],
        )
        health[name] = health_port
        backends.append(
            balancer.Backend(name, f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", health_port)
        )
    agents_port = free_port_pair()
    config, stats = tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"
    balancer.write_config(
        config,
        agents_port=agents_port,
        enroll_port=agents_port + 1,
        backends=backends,
        stats_socket=stats,
        check_ms=CHECK_MS,
    )
    balancer.check_config(config)
    haproxy = procs.start("haproxy", balancer.command(config))
    site = Site(
        pki_dir, store_url, agents_port, agents_port + 1, stats, collectors, health, haproxy
    )
    wait_for(
        lambda: stats.exists() and set(site.status().values()) == {"UP"},
        "HAProxy to see every collector UP",
        timeout=DOWN_TIMEOUT_S,
        watch=[haproxy, *collectors.values()],
    )
    return site


def health(port: int) -> tuple[int, dict[str, Any]]:
    """GET /health on a collector's health port: (status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def fleet(site: Site, *args: str) -> list[str]:
    """The simulator's command line against ``site``'s HAProxy."""
    return [
        sys.executable, "-m", "bench.fleet",
        "--collector", f"127.0.0.1:{site.agents_port}",
        "--enroll", f"127.0.0.1:{site.enroll_port}",
        "--ca", str(site.ca), "--store", site.store_url, "--verify", *args,
    ]  # fmt: skip


def result_of(output: str) -> dict[str, Any]:
    """The simulator's JSON result: its last line that is one."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            doc: dict[str, Any] = json.loads(line)
            return doc
    raise AssertionError(f"no JSON result in the simulator's output:\n{output[-3000:]}")


def test_the_shipped_configuration_is_valid() -> None:
    balancer.check_config(SHIPPED)


def test_a_fleet_through_haproxy_is_stored_once_under_its_certificates_host_ids(
    tmp_path: Path, procs: Processes
) -> None:
    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    site = start_site(tmp_path, procs, f"sqlite:///{tmp_path / 'events.db'}", ["c1"], pki_dir)
    assert health(site.health_ports["c1"]) == (200, {"status": "serving"})

    done = run_cli(fleet(site, "--hosts", "100", "--events", "40"), timeout=FLEET_TIMEOUT_S)
    result = result_of(done.stdout)
    assert result["acked"] == result["events"] == 4000
    assert result["errors"] == {}
    assert result["verified"] == {"hosts_ok": 100, "bad": [], "exact": True}
    assert result["ack_p99_ms"] >= result["ack_p50_ms"] > 0

    # mTLS ends at the collector: through HAProxy, the collector names the host after
    # the client certificate that enrolment (also through HAProxy) issued.
    state = tmp_path / "agent"
    run_cli(
        [
            cli("baomi-agent"), "--state-dir", str(state), "enroll",
            "--collector", f"127.0.0.1:{site.agents_port}",
            "--enroll-address", f"127.0.0.1:{site.enroll_port}",
            "--token", create_token(site.store_url, "lb-host"), "--ca", str(site.ca),
        ]
    )  # fmt: skip
    creds = grpc.ssl_channel_credentials(
        root_certificates=site.ca.read_bytes(),
        private_key=(state / "host.key").read_bytes(),
        certificate_chain=(state / "host.pem").read_bytes(),
    )
    assert _first_ack(f"127.0.0.1:{site.agents_port}", creds).host_id == "lb-host"
    # Without a client certificate the collector's handshake refuses it, balancer or not.
    with pytest.raises(grpc.RpcError):
        _first_ack(
            f"127.0.0.1:{site.agents_port}",
            grpc.ssl_channel_credentials(root_certificates=site.ca.read_bytes()),
        )


def _first_ack(address: str, creds: grpc.ChannelCredentials) -> events_pb2.Ack:
    with grpc.secure_channel(address, creds) as channel:
        call = channel.stream_stream(
            "/baomi.v1.Collector/Stream",
            request_serializer=None,
            response_deserializer=events_pb2.Ack.FromString,
        )(iter(()), timeout=10)
        ack: events_pb2.Ack = next(call)
        return ack


@pytest.fixture
def pg_store_url(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL store: collectors share PostgreSQL only (SQLite serves one)."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.mark.postgres
def test_two_collectors_on_one_postgresql_behind_haproxy(
    tmp_path: Path, procs: Processes, pg_store_url: str
) -> None:
    """A collector SIGKILLed while 100 hosts stream through HAProxy is taken out; its
    hosts move to the other, nothing is lost and the record verifies."""
    store_url = pg_store_url
    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    site = start_site(tmp_path, procs, store_url, ["c1", "c2"], pki_dir)
    sim = procs.start("fleet", fleet(site, "--hosts", "100", "--events", "60", "--rate", "5"))
    time.sleep(4)
    site.collectors["c1"].kill()
    wait_for(
        lambda: site.status().get("c1") == "DOWN",
        "HAProxy to take the killed collector out",
        timeout=DOWN_TIMEOUT_S,
        watch=[site.haproxy],
    )
    assert site.status()["c2"] == "UP"
    assert sim.popen.wait(timeout=FLEET_TIMEOUT_S) == 0, sim.output()
    result = result_of(sim.output())
    assert result["verified"]["exact"], result
    assert result["acked"] == 6000
    assert result["reconnects"] > 0  # c1's hosts did move
    assert health(site.health_ports["c2"])[0] == 200
    run_cli(
        [cli("baomi-collector"), "audit", "verify", "--store", store_url, "--pki", str(pki_dir)]
    )


def test_the_simulator_fails_over_by_itself_past_a_dead_address(
    tmp_path: Path, procs: Processes
) -> None:
    pki_dir, store_url = tmp_path / "pki", f"sqlite:///{tmp_path / 'events.db'}"
    init_pki(pki_dir)
    port, dead = free_port_pair(), free_port_pair()
    start_collector(procs, store_url=store_url, pki_dir=pki_dir, port=port)
    live = f"127.0.0.1:{port}"
    done = run_cli(
        [
            sys.executable, "-m", "bench.fleet", "--hosts", "20", "--events", "30",
            "--collector", f"127.0.0.1:{dead},{live}",
            "--enroll", f"127.0.0.1:{dead + 1},127.0.0.1:{port + 1}",
            "--ca", str(pki_dir / "ca.pem"), "--store", store_url, "--verify",
        ],
        timeout=FLEET_TIMEOUT_S,
    )  # fmt: skip
    result = result_of(done.stdout)
    assert result["verified"]["exact"], result
    assert result["acked"] == 600
    # The hosts that started on the dead address (every other one) moved on.
    assert result["reconnects"] == result["errors"]["connect_UNAVAILABLE"] == 10
