"""An offline secret computer (涉密单机) end to end: guarded with no collector, enrolled
by files, its export imported once at a real collector, every tampering refused.

The host side and the collector side are the real programs (``baomi-agent``,
``baomi-collector`` as subprocesses, exactly as an officer runs them with a stick in
between); the guarded host is the real agent core with the fanotify file guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from baomi import chain, exportfile
from baomi.v1 import events_pb2

from agent import offline
from agent.core import AgentConfig
from agent.spool import Spool
from collector import offline as collector_offline
from collector.store import Store, open_store
from tests.collector_harness import RunningCollector, init_pki
from tests.integration.test_agent import AgentThread, wait_for
from tests.integration.test_file_guard import Site, site  # noqa: F401 - the fixture

BIN = Path(sys.executable).parent
HOST = "ws-off"


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One command line of the real programs, as the officer types it."""
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Desk:
    """The collector's files and the host's state, side by side in one scratch dir."""

    root: Path
    store_url: str  # the collector's store, each backend

    def store(self) -> Store:
        return open_store(self.store_url)

    @property
    def state(self) -> Path:
        return self.root / "host"

    def collector(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run(
            "baomi-collector", *argv, "--store", self.store_url, "--pki", "pki", cwd=self.root
        )

    def agent(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("baomi-agent", "--state-dir", str(self.state), *argv, cwd=self.root)

    def enroll_by_file(self) -> None:
        """The four steps, each file carried over on the stick."""
        for step in (
            lambda: self.collector("enroll-file", "token", "--host", HOST, "--out", "t.json"),
            lambda: self.agent("enroll", "--token-file", "t.json", "--csr-out", "r.json"),
            lambda: self.collector("enroll-file", "sign", "r.json", "--out", "c.pem"),
            lambda: self.agent("enroll", "--cert-file", "c.pem"),
        ):
            done = step()
            assert done.returncode == 0, done.stderr


@pytest.fixture
def desk(tmp_path: Path, store_url: str) -> Desk:
    init_pki(tmp_path / "pki")
    return Desk(tmp_path, store_url)


def _spooled(state: Path) -> list[tuple[int, bytes]]:
    spool = Spool(state / "spool.db")
    try:
        return spool.read_after(0, 1_000_000)
    finally:
        spool.close()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)")
def test_a_guarded_offline_host_is_imported_once_and_the_record_verifies(
    site: Site,  # noqa: F811 - the fixture
    desk: Desk,
) -> None:
    # Guarded with no collector and no certificate: the agent starts and decides opens.
    agent = AgentThread(
        AgentConfig(
            state_dir=desk.state,
            heartbeat_seconds=3600,
            offline=True,
            host_id=HOST,
            sensors={
                "files": {
                    "roots": [str(site.root)],
                    "policies": str(site.policies),
                    "deadline": 0.5,
                    "label_key": str(site.key_file),
                    "unsafe_no_guardian": True,  # in-process agent: see test_file_guard
                }
            },
        )
    )
    try:
        wait_for(lambda: any(s.health().state == "ok" for s in agent.agent.sensors))
        assert agent.agent.identity is None and not (desk.state / "host.pem").exists()
        assert site.open_as(2002, "s1.txt")  # bob, 秘密, his department
        assert not site.open_as(2002, "s2.txt")  # bob may not read up to 机密
        assert agent.agent.recorder.flush()
    finally:
        agent.stop()
    listed = desk.agent("events", "--json", "--kind", "file_access")
    assert listed.returncode == 0, listed.stderr
    accesses = [json.loads(line)["file_access"] for line in listed.stdout.splitlines()]
    assert {(a["path"].rsplit("/", 1)[-1], a["decision"]) for a in accesses} == {
        ("s1.txt", "DECISION_ALLOW"),
        ("s2.txt", "DECISION_DENY"),
    }

    collector = RunningCollector(desk.store(), desk.root / "pki")
    try:
        desk.enroll_by_file()
        exported = desk.agent("export", "--out", "e.json")
        assert exported.returncode == 0, exported.stderr
        imported = desk.collector("import", "e.json")
        assert imported.returncode == 0, imported.stderr
        host_rows = list(collector.store.chain(HOST))
        # The same events, byte for byte, so the same chain; the export recorded itself.
        assert [(r.seq, r.body) for r in host_rows] == _spooled(desk.state)
        last = events_pb2.Event.FromString(host_rows[-1].body).console_action
        assert (last.action, last.target) == ("export", "e.json")
        assert f"{len(host_rows)} events stored" in imported.stdout
        assert f"--forget-through {host_rows[-1].seq}" in imported.stdout

        again = desk.collector("import", "e.json")
        assert again.returncode == 0, again.stderr
        assert "nothing new" in again.stdout
        assert len(list(collector.store.chain(HOST))) == len(host_rows)

        # The running collector records both imports and signs the imported events.
        def recorded() -> list[events_pb2.ConsoleAction]:
            return [
                a
                for r in collector.store.chain("_collector")
                if (a := events_pb2.Event.FromString(r.body).console_action).action == "import"
            ]

        wait_for(lambda: len(recorded()) == 2)
        assert all(a.ok and a.client == "cli" and a.target == HOST for a in recorded())
        assert collector.collector.ingest.writer.heads[HOST][0] == host_rows[-1].seq
    finally:
        collector.stop()
        collector.store.close()
    verified = desk.collector("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    forgot = desk.agent("export", "--forget-through", str(host_rows[-1].seq))
    assert forgot.returncode == 0, forgot.stderr
    report = desk.agent("report")
    assert report.returncode == 0, report.stderr
    assert f"import confirmed through seq {host_rows[-1].seq}" in report.stdout
    assert "hash chain: unbroken" in report.stdout
    assert "denied accesses (1)" in report.stdout


# -- tampering ----------------------------------------------------------------------------


@pytest.fixture
def exported(desk: Desk) -> Iterator[tuple[Desk, exportfile.ExportFile]]:
    """An offline host with a few heartbeats of record, enrolled by file and exported."""
    agent = AgentThread(
        AgentConfig(state_dir=desk.state, heartbeat_seconds=0.05, offline=True, host_id=HOST)
    )
    try:
        wait_for(lambda: agent.agent.spool.head[0] >= 6)
    finally:
        agent.stop()
    desk.enroll_by_file()
    done = desk.agent("export", "--out", "e.json")
    assert done.returncode == 0, done.stderr
    yield desk, exportfile.loads((desk.root / "e.json").read_bytes())


def _rewritten(body: bytes, **changes: object) -> bytes:
    event = events_pb2.Event.FromString(body)
    for name, value in changes.items():
        setattr(event, name, value)
    return chain.canonical_bytes(event)


def _changed_status(body: bytes) -> bytes:
    event = events_pb2.Event.FromString(body)
    event.agent_status.state = "nothing happened here"
    return chain.canonical_bytes(event)


def _tamperings(e: exportfile.ExportFile) -> list[tuple[str, dict[str, object], str]]:
    b = e.bodies
    return [
        ("body changed", {"bodies": [b[0], _changed_status(b[1]), *b[2:]]}, "seq 2 was changed"),
        (
            "last body changed",
            {"bodies": [*b[:-1], _rewritten(b[-1], severity=events_pb2.SEVERITY_LOW)]},
            f"seq {e.last_seq} was changed",
        ),
        ("event removed", {"bodies": [b[0], *b[2:]]}, "seq 2 is missing"),
        ("reordered", {"bodies": [b[0], b[2], b[1], *b[3:]]}, "seq 2 is out of order"),
        ("tail cut", {"bodies": b[:-2]}, f"seq {e.last_seq - 1}..{e.last_seq} are missing"),
        ("signature wrong", {"signature": bytes(64)}, "signature is not the host key's"),
        ("other host named", {"host_id": "ws-other"}, "certificate names another host"),
    ]


def test_each_tampering_is_refused_naming_the_seq_and_nothing_is_stored(
    exported: tuple[Desk, exportfile.ExportFile],
) -> None:
    desk, export = exported
    for what, changes, said in _tamperings(export):
        forged = exportfile.ExportFile(**{**export.__dict__, **changes})  # type: ignore[arg-type]
        (desk.root / "bad.json").write_bytes(forged.dumps())
        done = desk.collector("import", "bad.json")
        assert done.returncode == 1, (what, done.stdout, done.stderr)
        assert said in done.stderr and "nothing stored" in done.stderr, (what, done.stderr)
    store = desk.store()
    try:
        assert store.head(HOST) is None
        refused = [a for a in store.pending_actions() if a.action == "import"]
        assert len(refused) == len(_tamperings(export)) and not any(a.ok for a in refused)
    finally:
        store.close()
    # The untouched file still goes in.
    assert desk.collector("import", "e.json").returncode == 0


def test_an_unknown_host_is_refused(exported: tuple[Desk, exportfile.ExportFile]) -> None:
    desk, _ = exported
    other = Desk(desk.root / "elsewhere", f"sqlite:///{desk.root / 'elsewhere.db'}")
    other.root.mkdir()
    init_pki(other.root / "pki")  # another collector, whose host this one never enrolled
    done = other.collector("import", str(desk.root / "e.json"))
    assert done.returncode == 1
    assert "not issued by this collector" in done.stderr


def test_an_export_that_skips_an_unimported_one_is_refused_and_again_fills_the_gap(
    exported: tuple[Desk, exportfile.ExportFile],
) -> None:
    desk, first = exported
    done = desk.agent("export", "--out", "e2.json")  # only what came after e.json
    assert done.returncode == 0, done.stderr
    skipped = desk.collector("import", "e2.json")  # e.json was lost on the way
    assert skipped.returncode == 1
    assert f"seq {first.last_seq + 1} does not continue the stored chain" in skipped.stderr
    assert "export --again" in skipped.stderr
    again = desk.agent("export", "--again", "--out", "e3.json")  # all not confirmed
    assert again.returncode == 0, again.stderr
    assert desk.collector("import", "e3.json").returncode == 0
    assert "nothing new" in desk.collector("import", "e2.json").stdout  # overlap: fine


def test_enrolment_files_are_single_use_expiring_and_bound_to_the_host(desk: Desk) -> None:
    offline.prepare(desk.state, HOST)
    desk.enroll_by_file()
    reused = desk.collector("enroll-file", "sign", "r.json", "--out", "c2.pem")
    assert reused.returncode == 1
    assert "unknown, already used or expired" in reused.stderr
    token = desk.collector("enroll-file", "token", "--host", "ws-else", "--out", "t2.json")
    assert token.returncode == 0, token.stderr
    wrong = desk.agent("enroll", "--token-file", "t2.json", "--csr-out", "r2.json")
    assert wrong.returncode == 2
    assert f"this host records as {HOST!r}" in wrong.stderr
    expiring = desk.collector(
        "enroll-file", "token", "--host", HOST, "--out", "t3.json", "--ttl", "0"
    )
    assert expiring.returncode == 0, expiring.stderr
    asked = desk.agent("enroll", "--token-file", "t3.json", "--csr-out", "r3.json")
    assert asked.returncode == 0, asked.stderr
    expired = desk.collector("enroll-file", "sign", "r3.json", "--out", "c3.pem")
    assert expired.returncode == 1
    assert "unknown, already used or expired" in expired.stderr
    assert not (desk.root / "c3.pem").exists()
    store = desk.store()
    try:
        actions = [(a.action, a.ok) for a in store.pending_actions()]
    finally:
        store.close()
    assert actions.count((collector_offline.ENROLL_ACTION, False)) == 2


def test_a_certificate_for_another_key_is_not_installed(desk: Desk) -> None:
    offline.prepare(desk.state, HOST)
    desk.enroll_by_file()
    (desk.state / "host.key").unlink()  # the key the request was made with is gone
    offline.host_key(desk.state)
    done = desk.agent("enroll", "--cert-file", "c.pem")
    assert done.returncode == 2
    assert "certifies another key" in done.stderr


def test_the_offline_spool_says_when_it_grows_large(tmp_path: Path) -> None:
    state = tmp_path / "host"
    agent = AgentThread(
        AgentConfig(
            state_dir=state,
            heartbeat_seconds=0.05,
            offline=True,
            host_id=HOST,
            spool_max_bytes=1,
        )
    )
    try:
        wait_for(lambda: agent.agent.spool.full and agent.agent.spool.head[0] >= 3)
        time.sleep(0.2)
    finally:
        agent.stop()
    statuses = [
        e.agent_status for _, b in _spooled(state)
        if (e := events_pb2.Event.FromString(b)).HasField("agent_status")
    ]  # fmt: skip
    assert any(s.state == "spool_full" for s in statuses)
    stream = [h for s in statuses for h in s.sensors if h.name == "stream"]
    assert any(h.state == "degraded" and "baomi-agent export" in h.detail for h in stream)


def test_an_import_while_the_collector_is_down_is_named_at_its_start(
    exported: tuple[Desk, exportfile.ExportFile],
) -> None:
    desk, export = exported
    assert desk.collector("import", "e.json").returncode == 0  # no collector runs
    collector = RunningCollector(desk.store(), desk.root / "pki")
    try:

        def own() -> list[events_pb2.Event]:
            return [
                events_pb2.Event.FromString(r.body) for r in collector.store.chain("_collector")
            ]

        wait_for(lambda: any(e.console_action.action == "import" for e in own()))
        (alert,) = [e.tamper for e in own() if e.tamper.kind == "uncovered_at_start"]
        assert alert.subject_host == HOST and alert.subject_seq == 1
        assert "an import of this host's signed export ran meanwhile" in alert.detail
    finally:
        collector.stop()
        collector.store.close()
    verified = desk.collector("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    store = desk.store()
    try:
        assert store.head(HOST) == (export.last_seq, export.head_hash)
    finally:
        store.close()
