"""Every console action is an event in the collector's chain, with actor, role and time,
and the auditor reads them (and verifies the chain) in the console."""

from __future__ import annotations

import time
from pathlib import Path

from baomi import chain
from baomi.v1 import events_pb2

from collector.console.auth import create_account
from collector.ingest import now_us
from collector.store import Store
from tests.collector_harness import batch, enroll_host, raw_sql, send_batches
from tests.integration.console.conftest import PASSWORD, Console, start_console


def _violation(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    denied = events_pb2.FileAccess(
        path="/srv/secret/plan.docx", action="read", user="wang", decision=events_pb2.DECISION_DENY
    )
    events = host.events(1, file_access=denied)
    events[0].severity = events_pb2.SEVERITY_MEDIUM
    # The chain hash covers severity: recompute it after the change.
    host.head = chain.event_hash(events[0])
    send_batches(host, console.running.address, [batch(events)])


def test_every_action_is_in_the_audit_log_with_actor_role_and_time(console: Console) -> None:
    start = now_us()
    _violation(console)
    sam, sue, aud = (console.as_role(r) for r in ("sysadmin", "secadmin", "auditor"))
    console.client().login("sam", "not-the-password")
    assert aud.get("/events/ws-01/1").status == 200
    assert aud.get("/events/export.csv?kind=file_access").status == 200
    assert sam.post("/hosts/token", {"host": "ws-02"}).status == 200
    assert sam.post("/hosts/decommission", {"host": "ws-01"}).status == 303
    # Creating answers 303 (no password shown to the creator); granting answers 200 with
    # the one-time password for the grantor.
    assert sam.post("/accounts/new", {"name": "ned"}).status == 303
    assert sue.post("/accounts/grant", {"name": "ned", "role": "auditor"}).status == 200
    assert sam.post("/settings", {"webhooks": "", "syslog": "", "timezone": "UTC"}).status == 200
    assert (
        sue.post("/findings/new", {"host": "ws-01", "seq": "1", "owner": "li", "due": ""}).status
        == 303
    )
    assert (
        sue.post("/findings/1", {"owner": "li", "due": "2027-01-31", "status": "rectifying"}).status
        == 303
    )
    bundle = console.running.collector.policy.current
    assert bundle is not None
    form = {f"file:{n}": d.decode() for n, d in bundle.files.items()}
    form["file:policy.csv"] += "p, role:staff, /srv/secret/shared/**, write, deny\n"
    assert sue.post("/policy/save", form).status == 303
    assert aud.post("/audit/verify", {}).status == 200
    new = "another-long-password"
    assert aud.post("/password", {"current": PASSWORD, "new": new, "confirm": new}).status == 303
    assert sue.post("/logout", {}).status == 303

    expected = {
        ("login", "sam", "sysadmin"),
        ("login", "sue", "secadmin"),
        ("login", "aud", "auditor"),
        ("login_failed", "sam", "sysadmin"),
        ("view_event", "aud", "auditor"),
        ("export", "aud", "auditor"),
        ("token_create", "sam", "sysadmin"),
        ("decommission", "sam", "sysadmin"),
        ("account_create", "sam", "sysadmin"),
        ("role_grant", "sue", "secadmin"),
        ("settings_change", "sam", "sysadmin"),
        ("finding_create", "sue", "secadmin"),
        ("finding_update", "sue", "secadmin"),
        ("policy_change", "sue", "secadmin"),
        ("verify_chain", "aud", "auditor"),
        ("password_change", "aud", "auditor"),
        ("logout", "sue", "secadmin"),
    }
    events = console.audit()
    seen = {
        (e.console_action.action, e.console_action.actor, e.console_action.role) for e in events
    }
    assert expected <= seen, expected - seen
    end = now_us()
    for e in events:
        if e.console_action.actor.startswith("cli:"):
            continue  # the fixture's accounts, recorded as the collector started
        assert start <= e.time.ToMicroseconds() <= end
        assert e.host_id == "_collector"
    # The auditor reads them in the console (time zone from the settings: UTC now).
    aud.jar.clear()
    aud.login("aud", new)
    page = aud.get("/audit").text
    for action in ("登录失败", "查看事件", "导出", "修改策略", "授予角色", "注销终端"):
        assert action in page
    assert aud.get("/audit?actor=sue").text.count("<tr") >= 5
    # The record, console actions included, verifies.
    verified = aud.post("/audit/verify", {})
    assert 'id="verify-result"' in verified.text and 'class="ok"' in verified.text


def test_accounts_made_on_the_command_line_are_audited(console: Console) -> None:
    # What `baomi-collector user add` does while the collector runs.
    create_account(console.store, "cliuser", role="auditor", by="cli:root")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        actions = [
            e.console_action
            for e in console.audit()
            if e.console_action.action == "account_create" and e.console_action.target == "cliuser"
        ]
        if actions:
            break
        time.sleep(0.2)
    assert actions and actions[0].actor == "cli:root" and "auditor" in actions[0].detail
    # Only once, though the check runs every few seconds.
    time.sleep(2.5)
    assert sum(1 for e in console.audit() if e.console_action.target == "cliuser") == 1


def test_the_auditors_verification_uses_the_witness_file(
    store: Store, store_url: str, pki_dir: Path, tmp_path: Path
) -> None:
    """With serve --witness, the console's verification checks the store against the
    witness file too: the newest checkpoint deleted with its events is found."""
    witness = tmp_path / "checkpoints.witness"
    create_account(store, "aud", role="auditor", by="cli:test", password=PASSWORD)
    running = start_console(store, pki_dir, witness=witness)
    console = Console(running, f"http://127.0.0.1:{running.collector.ports['console']}")
    try:
        host = enroll_host(running, "ws-01")
        send_batches(host, running.address, [batch(host.events(10))])
        running.checkpoint()
        aud = console.client()
        aud.login("aud", PASSWORD)
        assert 'class="ok"' in aud.post("/audit/verify", {}).text
        last = store.checkpoints()[-1]
        raw_sql(store_url, "DELETE FROM checkpoints WHERE id = ?", last.id)
        page = aud.post("/audit/verify", {}).text
        assert 'class="ok"' not in page
        assert f"witnessed checkpoint {last.id} is not in the store" in page
    finally:
        running.stop()
