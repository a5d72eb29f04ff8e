"""The classification register end to end: a real collector with its console, a real
agent guarding a tree with fanotify, the real ``baomi-agent label request`` command.

A request made on the host is approved by the secadmin over HTTP; the collector's
signed label order reaches the agent, which labels the file (sealed, with the register
id) and reports it; the register shows it in force; the next open is decided by the
new label. A change and a declassification go the same way. A label set by hand is a
finding within one heartbeat.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from baomi.labels import LABEL_KEY_FILE, read_label
from baomi.v1 import events_pb2

from agent import label_orders
from agent.core import AgentConfig
from agent.identity import enroll
from agent.spool import Spool
from collector.console import ConsoleConfig
from collector.console.auth import create_account
from collector.ingest import COLLECTOR_HOST
from collector.register import Entry, Register
from collector.server import create_token
from collector.store import register_table
from collector.store.sqlite import SQLiteStore
from tests.collector_harness import RunningCollector, init_pki
from tests.integration.console.web import Client
from tests.integration.test_agent import FAST, AgentThread, wait_for
from tests.integration.test_file_guard import Site, site  # noqa: F401 - the site fixture

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery"  # noqa: S105 - a test account's
HEARTBEAT_SECONDS = 0.5
BOB, CAROL = 2002, 2003  # 一般 (up to 秘密) and 重要 (up to 机密), see test_file_guard


@dataclass
class Deployment:
    """A collector with its console, and an agent guarding the site."""

    site: Site
    collector: RunningCollector
    agent: AgentThread
    state: Path
    console: str

    def register(self) -> Register:
        return Register.load(self.collector.store)

    def entry(self, register_id: str) -> Entry:
        return self.register().entries[register_id]

    def as_role(self, name: str) -> Client:
        c = Client(self.console)
        assert c.login(name, PASSWORD).status == 303
        return c

    def request(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``baomi-agent label request ...`` on the host, as an officer would type it."""
        return self.label("request", *argv)

    def label(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``baomi-agent label ...`` on the host, run by the login ``zhang`` with sudo."""
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'protos'}:{REPO}", "SUDO_USER": "zhang"}
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", "--state-dir", str(self.state), "label", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )  # fmt: skip


@pytest.fixture
def deployment(site: Site, tmp_path: Path) -> Iterator[Deployment]:  # noqa: F811 - the fixture
    store = SQLiteStore(tmp_path / "c.db")
    init_pki(tmp_path / "pki")
    for name, role in (("sue", "secadmin"), ("tom", "secadmin"), ("aud", "auditor")):
        create_account(store, name, role=role, by="cli:test", password=PASSWORD)
    collector = RunningCollector(
        store,
        tmp_path / "pki",
        checkpoint_seconds=3600,
        console=ConsoleConfig(listen="127.0.0.1:0"),
    )
    state = tmp_path / "agent"
    enroll(
        state,
        collector.address,
        create_token(store, "ws-01"),
        (tmp_path / "pki" / "ca.pem").read_bytes(),
        collector.enroll_address,
    )
    config = AgentConfig(
        state_dir=state,
        heartbeat_seconds=HEARTBEAT_SECONDS,
        stream=FAST,
        sensors={
            "files": {
                "roots": [str(site.root)],
                "policies": str(site.policies),
                "deadline": 0.5,
                "label_key": str(site.key_file),
                "unsafe_no_guardian": True,  # in-process agent (see test_file_guard)
            }
        },
    )
    # The host's label key where its command line looks for it too (the guard's).
    shutil.copy(site.key_file, state / LABEL_KEY_FILE)
    agent = AgentThread(config)
    try:
        wait_for(
            lambda: any(s.name == "files" and s.health().state == "ok" for s in agent.agent.sensors)
        )
        yield Deployment(
            site,
            collector,
            agent,
            state,
            f"http://127.0.0.1:{collector.collector.ports['console']}",
        )
    finally:
        agent.stop()
        collector.stop()
        store.close()


def _requested(d: Deployment, path: Path, action: str) -> Entry:
    """The entry whose ``action`` request for ``path`` waits for a decision."""
    found: list[Entry] = []

    def waiting() -> bool:
        found[:] = [
            e
            for e in d.register().entries.values()
            if e.home == str(path) and e.pending is not None and e.pending.action == action
        ]
        return bool(found)

    wait_for(waiting)
    return found[0]


def _approve(d: Deployment, register_id: str) -> None:
    sue = d.as_role("sue")
    page = sue.get("/register")
    assert page.status == 200 and register_id in page.text
    assert sue.post("/register/approve", {"register_id": register_id}).status == 303


def _label_level(d: Deployment, path: Path) -> int | None:
    label = read_label(path, d.site.key)
    return None if label is None or label.problem else label.level


def test_request_approve_change_declassify(deployment: Deployment) -> None:
    d = deployment
    plan = d.site.root / "plan.txt"
    plan.write_text("the plan\n")
    plan.chmod(0o644)
    assert d.site.open_as(BOB, "plan.txt")  # unlabelled: anyone reads it

    # A request on the host, with the register's fields.
    done = d.request(str(plan), "--level", "机密", "--until", "2099-12-31", "--basis",
                     "保密事项范围 第3条", "--title", "年度计划")  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = _requested(d, plan, "classify")
    rid = entry.register_id
    assert (entry.status, entry.title, entry.requester) == ("pending", "年度计划", "zhang")
    assert _label_level(d, plan) is None  # nothing happens before an approval

    # The auditor reads the register but cannot approve.
    aud = d.as_role("aud")
    assert rid in aud.get("/register").text
    assert aud.post("/register/approve", {"register_id": rid}).status == 403

    _approve(d, rid)
    wait_for(lambda: d.entry(rid).status == "in_force")
    label = read_label(plan, d.site.key)  # sealed with the host key: read with it
    assert label is not None and label.valid
    assert (label.level, label.label_id, label.home) == (2, rid, str(plan))
    assert label.until is not None and label.until.isoformat() == "2099-12-31"
    entry = d.entry(rid)
    assert (entry.approver, entry.level) == ("sue", 2)
    assert [h.step for h in entry.history] == ["requested", "approved", "applied"]
    assert not d.site.open_as(BOB, "plan.txt")  # 机密 now: 一般 may not read it
    assert d.site.open_as(CAROL, "plan.txt")

    # A change of level asked in the console, approved by another secadmin (who asks
    # does not decide): the next open sees 绝密.
    tom = d.as_role("tom")
    form = {"action": "change", "host": "ws-01", "path": str(plan), "register_id": rid,
            "level": "3", "until": "2099-12-31", "basis": "升级"}  # fmt: skip
    assert tom.post("/register/request", form).status == 303
    refused = tom.post("/register/approve", {"register_id": rid})
    assert refused.status == 400 and "cannot approve it" in refused.text
    _approve(d, rid)
    wait_for(lambda: d.entry(rid).status == "changed")
    assert _label_level(d, plan) == 3
    assert not d.site.open_as(CAROL, "plan.txt")

    # A declassification from the host: the register id comes from the label.
    done = d.request(str(plan), "--action", "declassify")
    assert done.returncode == 0, done.stderr
    _requested(d, plan, "declassify")
    _approve(d, rid)
    wait_for(lambda: d.entry(rid).status == "declassified")
    assert _label_level(d, plan) == 0
    assert d.site.open_as(BOB, "plan.txt")

    entry = d.entry(rid)
    steps = [h.step for h in entry.history]
    assert steps == ["requested", "approved", "applied"] * 3
    # Every step is an event of the collector's chain.
    kinds = {r.seq: r.kind for r in d.collector.store.chain(COLLECTOR_HOST)}
    assert all(kinds[h.seq] == "register_step" for h in entry.history)
    actions = [
        events_pb2.Event.FromString(r.body).console_action
        for r in d.collector.store.chain(COLLECTOR_HOST)
        if r.kind == "console_action"
    ]
    approvals = [(a.actor, a.ok) for a in actions if a.action == "register_approve"]
    assert approvals == [("sue", True), ("tom", False), ("sue", True), ("sue", True)]
    assert [a.actor for a in actions if a.action == "register_request"] == ["tom"]
    # The table for queries holds what the record says.
    assert register_table.entries(d.collector.store, status="declassified") == [entry.row()]


def test_a_rejection_is_recorded_and_labels_nothing(deployment: Deployment) -> None:
    d = deployment
    memo = d.site.root / "memo.txt"
    memo.write_text("memo\n")
    done = d.request(str(memo), "--level", "秘密", "--basis", "第1条", "--title", "备忘")
    assert done.returncode == 0, done.stderr
    rid = _requested(d, memo, "classify").register_id
    sue = d.as_role("sue")
    refused = sue.post("/register/reject", {"register_id": rid, "reason": " "})
    assert refused.status == 400 and "say why" in refused.text
    assert (
        sue.post("/register/reject", {"register_id": rid, "reason": "不属于国家秘密"}).status == 303
    )
    entry = d.entry(rid)
    assert entry.status == "rejected"
    assert [(h.step, h.detail) for h in entry.history][-1] == ("rejected", "不属于国家秘密")
    assert read_label(memo, d.site.key) is None


def test_a_label_set_by_hand_is_a_finding_within_a_heartbeat(deployment: Deployment) -> None:
    d = deployment
    hand = d.site.root / "hand.txt"
    hand.write_text("labelled by root\n")

    def finding() -> list[str]:
        return [f.title for f in d.collector.store.findings() if str(hand) in f.title]

    # The agent's first inventory (the site's labels, none of them registered) is taken.
    wait_for(lambda: "ws-01" in d.collector.collector.register.host_drift())
    assert finding() == []
    done = d.label("set", str(hand), "--level", "机密")  # root, bootstrapping by hand
    assert done.returncode == 0, done.stderr
    # One heartbeat for the agent to see it, one look of the collector's (1 s).
    wait_for(lambda: bool(finding()), seconds=HEARTBEAT_SECONDS + 5)
    (title,) = finding()
    assert title.startswith("未登记的密级标志")
    page = d.as_role("aud").get("/register").text
    assert re.search(r"drift-unapproved_label.*?" + re.escape(str(hand)), page, re.S)

    # Until the register covers it: classified through a request, the finding closes.
    done = d.request(str(hand), "--level", "机密", "--until", "2020-01-01", "--basis", "第2条",
                     "--title", "补登")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rid = _requested(d, hand, "classify").register_id
    _approve(d, rid)
    wait_for(lambda: d.entry(rid).status == "in_force")

    def closed() -> bool:
        return [f.status for f in d.collector.store.findings() if str(hand) in f.title] == [
            "closed"
        ]

    wait_for(closed, seconds=HEARTBEAT_SECONDS + 5)
    label = read_label(hand, d.site.key)
    assert label is not None and label.label_id == rid
    # Its 保密期限 has passed: the register says it is declassified by itself.
    page = d.as_role("aud").get("/register").text
    assert re.search(re.escape(rid) + r".*?保密期限已过", page, re.S)
    assert "保密期限已过" not in page.split(rid)[0]  # only that entry


def test_a_request_made_offline_waits_in_the_spool(
    collector: RunningCollector, tmp_path: Path
) -> None:
    """No agent running (the host is offline): the request is kept in the spool and
    reaches the register once the agent runs again."""
    state = tmp_path / "agent"
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    enroll(state, collector.address, create_token(collector.store, "ws-01"), ca,
           collector.enroll_address)  # fmt: skip
    doc = tmp_path / "offline.txt"
    doc.write_text("written offline\n")
    request = label_orders.make_request(
        str(doc), action="classify", level="秘密", until=None, scope=None, basis="第4条",
        title="离线申请", register_id=None, responsible=None, key=None,
    )  # fmt: skip
    label_orders.spool_request(state, request)
    spool = Spool(state / "spool.db")
    assert spool.pending() == 1
    spool.close()
    assert Register.load(collector.store).entries == {}
    agent = AgentThread(AgentConfig(state_dir=state, heartbeat_seconds=0.5, stream=FAST))
    try:
        wait_for(lambda: bool(Register.load(collector.store).entries))
    finally:
        agent.stop()
    (entry,) = Register.load(collector.store).entries.values()
    assert (entry.title, entry.status, entry.home) == ("离线申请", "pending", str(doc.resolve()))
