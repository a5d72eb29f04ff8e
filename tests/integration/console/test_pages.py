"""Findings, meeting checks, the message catalogue and the security headers."""

from __future__ import annotations

import re
from pathlib import Path

from baomi import chain
from baomi.v1 import events_pb2

from collector.console import app, i18n
from collector.console.eventview import KINDS, SEVERITIES
from tests.collector_harness import batch, enroll_host, send_batches
from tests.integration.console.conftest import Console
from tests.integration.test_ingest_meeting_signatures import meeting_check

TEMPLATES = Path(app.__file__).parent / "templates"


def test_a_violation_becomes_a_finding_followed_to_closure(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    events = host.events(
        1,
        file_access=events_pb2.FileAccess(
            path="/srv/secret/plan.docx",
            user="wang",
            action="read",
            decision=events_pb2.DECISION_DENY,
        ),
    )
    events[0].severity = events_pb2.SEVERITY_MEDIUM
    host.head = chain.event_hash(events[0])
    send_batches(host, console.running.address, [batch(events)])
    sue, aud = console.as_role("secadmin"), console.as_role("auditor")
    assert 'action="/findings/new"' in sue.get("/events/ws-01/1").text
    assert 'action="/findings/new"' not in aud.get("/events/ws-01/1").text
    resp = sue.post(
        "/findings/new", {"host": "ws-01", "seq": "1", "owner": "李强", "due": "2027-01-31"}
    )
    assert resp.status == 303
    finding = console.store.findings()[0]
    assert (finding.status, finding.owner, finding.due, finding.host_id) == (
        "open",
        "李强",
        "2027-01-31",
        "ws-01",
    )
    assert "/srv/secret/plan.docx" in finding.title
    for status in ("rectifying", "closed"):
        resp = sue.post(
            f"/findings/{finding.id}", {"owner": "李强", "due": "2027-01-31", "status": status}
        )
        assert resp.status == 303
    assert console.store.finding(finding.id).status == "closed"  # type: ignore[union-attr]
    assert (
        sue.post(f"/findings/{finding.id}", {"status": "forgotten", "owner": "", "due": ""}).status
        == 400
    )
    assert sue.post("/findings/999", {"status": "open", "owner": "", "due": ""}).status == 404
    page = aud.get("/findings?status=closed").text
    assert "李强" in page and 'action="/findings/' not in page  # the auditor only reads
    assert aud.post(f"/findings/{finding.id}", {"status": "open"}).status == 403


def test_meeting_checks_are_listed(console: Console) -> None:
    host = enroll_host(console.running, "room-301")
    check = events_pb2.MeetingCheck(
        room="301",
        meeting="2026-Q4 保密工作会",
        phase="check",
        cleared=False,
        inspector="zhang",
        items=[
            events_pb2.CheckItem(id="C7", title="cabinet", result="fail", evidence="door open"),
            events_pb2.CheckItem(id="C1", title="venue", result="pass"),
        ],
    )
    send_batches(host, console.running.address, [batch(host.events(1, meeting_check=check))])
    page = console.as_role("secadmin").get("/meetings").text
    assert "2026-Q4 保密工作会" in page and "C7 fail" in page and "不准召开" in page
    assert "C1 pass" not in page


def _row(page: str, meeting: str) -> str:
    (row,) = [r for r in page.split("<tr")[1:] if f"<td>{meeting}</td>" in r]
    return row


def test_meeting_check_signature_status_is_shown(console: Console) -> None:
    """A check whose signature does not verify is shown INVALID and not cleared, with a
    link to the collector's alert; a good one is shown valid."""
    host = enroll_host(console.running, "room-301")
    good = meeting_check(host, meeting="m-good")
    forged = meeting_check(host, cleared=False, meeting="m-forged")
    forged.cleared = True  # flipped after signing
    events = host.events(1, meeting_check=good) + host.events(1, meeting_check=forged)
    send_batches(host, console.running.address, [batch(events)])
    page = console.as_role("auditor").get("/meetings").text
    valid, invalid = _row(page, "m-good"), _row(page, "m-forged")
    assert "签名有效" in valid and "准予召开" in valid
    assert "签名无效" in invalid and "不准召开" in invalid and "准予召开" not in invalid
    alert = next(r for r in console.store.chain("_collector") if b"meeting_signature" in r.body)
    assert f'href="/events/_collector/{alert.seq}"' in invalid
    assert "signature does not verify" in invalid  # the alert's detail, as the title
    english = console.as_role("auditor")
    english.get("/lang?to=en&next=/meetings")
    assert "INVALID" in _row(english.get("/meetings").text, "m-forged")


def test_every_message_exists_in_both_languages() -> None:
    assert set(i18n.MESSAGES["zh"]) == set(i18n.MESSAGES["en"])
    used: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"""(?<![\w.])t\(["']([a-z_]+)["']\s*[,)]""", template.read_text()))
    missing = used - set(i18n.MESSAGES["en"])
    assert not missing, missing
    families = {
        "kind_": KINDS,
        "severity_": SEVERITIES.values(),
        "role_": ("sysadmin", "secadmin", "auditor"),
        "state_": ("online", "degraded", "silent", "stopped", "unknown", "decommissioned"),
        "status_": ("open", "rectifying", "closed"),
        "decision_": ("allow", "block", "reject", "none"),
        "phase_": ("check", "sweep"),
        "signature_": ("valid", "invalid", "unchecked"),
    }
    for prefix, names in families.items():
        for name in names:
            assert prefix + name in i18n.MESSAGES["zh"], prefix + name
    # A key built from event data is shown as it is, never used as a format string.
    assert i18n.translate("zh", "phase_{0.__class__}", x=1) == "phase_{0.__class__}"


def test_security_headers_on_every_response(console: Console) -> None:
    c = console.client()
    for path in ("/login", "/static/console.js", "/metrics", "/nonexistent"):
        resp = c.get(path)
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
    assert c.get("/login").headers["cache-control"] == "no-store"
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "")
        assert "<script>" not in text and " style=" not in text and "onclick" not in text


def test_oversized_body_is_refused_before_it_is_read(console: Console) -> None:
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(console.base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.putrequest("POST", "/policy/preview")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(app.MAX_BODY_BYTES + 1))
        conn.endheaders()  # and no body: the answer must not wait for it
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_malformed_ids_and_values_are_refused_not_failed(console: Console) -> None:
    """Found by fuzzing (fuzz/targets.py, console_query): on either store, an id beyond
    64 bits, a digit that is not ASCII or a NUL answered 500 (SQLite: int too large;
    PostgreSQL: text cannot hold NUL); now 400 with a message, or 404 (test_input_bounds
    has every id past the range)."""
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(2))])
    sec, aud = console.as_role("secadmin"), console.as_role("auditor")
    huge = "9" * 30
    assert aud.get("/events/ws-01/1").status == 200
    for path in (f"/events/ws-01/{huge}", "/events/ws-01/" + "1" * 5000):
        assert aud.get(path).status == 400, path
    assert aud.get("/events/ws%0001/1").status == 404
    assert sec.get(f"/policy/versions/{huge}").status == 400
    for query in (f"before={huge}_1_ws-01", f"before=1_{huge}_ws-01", "before=1_1_ws%00"):
        assert aud.get("/events?" + query).status == 400, query
        assert aud.get("/audit?" + query).status == 400, query
    assert aud.get("/events?host=ws%0001").status == 400
    for form in ({"seq": "1²"}, {"seq": "9" * 20}, {"host": "ws\x0001", "seq": "1"}):
        resp = sec.post("/findings/new", {"host": "ws-01", **form})
        assert resp.status == 400, (form, resp.text)
    assert sec.post("/policy/rollback", {"number": "²"}).status == 400
    login = console.client().login("sue\x00", "x")
    assert login.status == 400, login.text
