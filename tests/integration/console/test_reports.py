"""Auditors make, list and download inspection reports in the console; each is audited."""

from __future__ import annotations

import datetime as dt

from tests.integration.console.conftest import Console


def test_auditor_generates_lists_and_downloads_a_report(console: Console) -> None:
    aud = console.as_role("auditor")
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    made = aud.post("/reports/generate", {"period": month, "format": "pdf"})
    assert made.status == 200
    assert "inspection" in made.text and month in made.text
    (row,) = console.store.reports("inspection")
    document = aud.get(f"/reports/{row.id}")
    assert document.status == 200 and document.body.startswith(b"%PDF")
    assert row.digest[:16] in made.text
    actions = {(e.console_action.action, e.console_action.actor) for e in console.audit()}
    assert ("report_generate", "aud") in actions and ("export", "aud") in actions


def test_bad_period_and_format_are_refused(console: Console) -> None:
    aud = console.as_role("auditor")
    bad = aud.post("/reports/generate", {"period": "2026-H7", "format": "pdf"})
    assert bad.status == 400 and "2026-H7" in bad.text
    assert aud.post("/reports/generate", {"period": "2026", "format": "exe"}).status == 400
    assert console.store.reports(None) == []


def test_only_auditors_see_reports(console: Console) -> None:
    for role in ("sysadmin", "secadmin"):
        assert console.as_role(role).get("/reports").status == 403
