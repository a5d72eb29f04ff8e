"""Bad input to the console: every integer is range-checked before the store (400 with a
message), every error answer carries the security headers, and every refusal of bad
input is in the audit chain like a refused grant (issue 13)."""

from __future__ import annotations

import sqlite3

import pytest

from collector.console.app import ID_MAX
from tests.collector_harness import batch, enroll_host, send_batches
from tests.integration.console.conftest import Console
from tests.integration.console.web import Client, Resp

PAST = str(2**63)  # one past the stores' signed 64-bit columns
HUGE = "9" * 30
RANGE_MESSAGE = f"from 1 to {ID_MAX}"


def assert_headers(resp: Resp) -> None:
    """The headers of a normal page (app.SecurityHeaders)."""
    csp = resp.headers["content-security-policy"] or ""
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, resp.status
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.headers["cache-control"] == "no-store"


def _refused(client: Client, method: str, path: str, form: dict[str, str] | None = None) -> Resp:
    resp = client.get(path) if method == "GET" else client.post(path, form or {})
    assert resp.status == 400, (method, path, form, resp.status, resp.text[:300])
    assert_headers(resp)
    return resp


def test_every_integer_past_the_range_answers_400_with_headers(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(2))])
    sec, aud = console.as_role("secadmin"), console.as_role("auditor")
    for number in (PAST, HUGE, "1" * 5000, "0", "0" * 30):
        for client, path in (
            (aud, f"/events/ws-01/{number}"),
            (sec, f"/policy/versions/{number}"),
            (aud, f"/reports/{number}"),
        ):
            resp = _refused(client, "GET", path)
            assert RANGE_MESSAGE in resp.text, path
        resp = _refused(sec, "POST", f"/findings/{number}", {"status": "open"})
        assert RANGE_MESSAGE in resp.text
    for number in (PAST, "0", "-1", "1e3", "١٢"):
        for path, form in (
            ("/findings/new", {"host": "ws-01", "seq": number}),
            ("/devices/approve", {"host": "ws-01", "seq": number, "level": "秘密"}),
            ("/policy/rollback", {"number": number}),
        ):
            resp = _refused(sec, "POST", path, form)
            assert RANGE_MESSAGE in resp.text, (path, resp.text)
    for before in (f"{PAST}_1_ws-01", f"1_{PAST}_ws-01", f"1_{HUGE}_ws-01"):
        _refused(aud, "GET", f"/events?before={before}")
        _refused(aud, "GET", f"/audit?before={before}")
    # The largest id there can be is a valid one: no such event.
    resp = aud.get(f"/events/ws-01/{ID_MAX}")
    assert resp.status == 404
    assert_headers(resp)
    refused = [e.console_action for e in console.audit() if e.console_action.action == "bad_input"]
    assert any(a.target == f"GET /events/ws-01/{PAST}" and not a.ok for a in refused)
    assert any(a.target == "POST /policy/rollback" and RANGE_MESSAGE in a.detail for a in refused)


def test_404_405_and_413_carry_the_headers(console: Console) -> None:
    import http.client
    from urllib.parse import urlsplit

    sam = console.as_role("sysadmin")
    resp = sam.get("/nonexistent")
    assert resp.status == 404
    assert_headers(resp)
    resp = sam.get("/hosts/token")  # POST only
    assert resp.status == 405
    assert_headers(resp)
    url = urlsplit(console.base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.putrequest("POST", "/settings")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(100 * 1024 * 1024))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413
        assert_headers(Resp(answer.status, answer.headers, answer.read()))
    finally:
        conn.close()


def test_an_unexpected_failure_answers_500_with_the_headers(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database is locked")  # the store failing under us

    aud = console.as_role("auditor")
    monkeypatch.setattr(console.store, "findings", locked)
    resp = aud.get("/findings")
    assert resp.status == 500
    assert_headers(resp)
    assert "database is locked" not in resp.text  # no internals in the answer


def test_refusals_of_bad_input_are_audited(console: Console) -> None:
    sam, sec = console.as_role("sysadmin"), console.as_role("secadmin")
    for client, path, form, detail in (
        (sam, "/accounts/new", {"name": "sue"}, "exists already"),
        (sam, "/hosts/decommission", {"host": "no-such-host"}, ""),
        (sec, "/accounts/grant", {"name": "sue", "role": "root"}, "'root' is not one of"),
        (
            sam,
            "/settings",
            {"webhooks": "", "syslog": "", "timezone": "Mars/Olympus"},
            "unknown time zone 'Mars/Olympus'",
        ),
    ):
        _refused(client, "POST", path, form)
        last = console.audit()[-1].console_action
        assert (last.action, last.target, last.ok) == ("bad_input", f"POST {path}", False), last
        assert detail in last.detail
        assert last.actor == ("sam" if client is sam else "sue")
        assert last.client == "127.0.0.1"  # who refused what, from where
        assert last.user_agent
