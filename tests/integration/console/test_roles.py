"""Three-role separation on the server: every route x every role, and the menus."""

from __future__ import annotations

import re

from baomi.v1 import events_pb2

from collector.console.routes import ROUTES
from collector.ingest import now_us
from collector.store.base import ROLES, FindingRow, ReportRow
from tests.collector_harness import batch, enroll_host, send_batches
from tests.integration.console.conftest import Console


def _path(template: str) -> str:
    """A concrete path of a route template: the host ws-01, every id 1."""
    return re.sub(r"\{\w+:(int|id)\}", "1", template.replace("{host}", "ws-01"))


def _seed(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(1))])
    now = now_us()
    console.store.add_finding(
        FindingRow(0, "ws-01", 1, "t", 3, "o", "", "open", "", now, "sue", now, "sue")
    )
    report = ReportRow(
        kind="inspection",
        subject="2026-11",
        fmt="pdf",
        lang="zh",
        created_us=now,
        digest="0" * 64,
        size=8,
    )
    console.store.add_report(report, b"%PDF-1.7")


def test_every_route_checks_the_role_on_the_server(console: Console) -> None:
    _seed(console)
    clients = {role: console.as_role(role) for role in ROLES}
    outcomes: list[tuple[str, str, str, int]] = []
    for page in ROUTES:
        if page.path == "/logout":
            continue  # ends the session; checked below
        path = _path(page.path)
        for method in page.methods:
            for role, client in clients.items():
                if method == "GET":
                    resp = client.get(path, read=path != "/events/stream")
                else:
                    resp = client.post(path, {})
                outcomes.append((method, page.path, role, resp.status))
    wrong = []
    for method, path, role, status in outcomes:
        page = next(p for p in ROUTES if p.path == path and method in p.methods)
        allowed = role in page.roles
        if allowed and method == "GET":
            ok = status == 200
        elif allowed:
            ok = status not in (401, 403)  # the empty form may be refused, but not for the role
        else:
            ok = status == 403
        if not ok:
            wrong.append((method, path, role, status))
    assert not wrong, wrong
    for role, client in clients.items():
        assert client.post("/logout", {}).status == 303
        assert client.get("/").status == 303  # logged out: back to the login page
        del role


def test_forbidden_attempts_are_audited(console: Console) -> None:
    auditor = console.as_role("auditor")
    assert auditor.get("/policy").status == 403
    assert auditor.post("/policy/save", {"file:policy.csv": "p, x, /y, read, allow"}).status == 403
    refused = [e.console_action for e in console.audit() if e.console_action.action == "forbidden"]
    assert [(a.actor, a.role, a.target, a.ok) for a in refused] == [
        ("aud", "auditor", "GET /policy", False),
        ("aud", "auditor", "POST /policy/save", False),
    ]
    assert console.store.policy_versions()[0].number == 1  # nothing was published


def test_without_a_session_pages_go_to_login_and_posts_are_refused(console: Console) -> None:
    anon = console.client()
    for page in ROUTES:
        path = _path(page.path)
        for method in page.methods:
            if method == "GET":
                resp = anon.get(path, read=False)
                if page.path == "/events/stream":
                    assert resp.status == 401
                else:
                    assert resp.status == 303, path
                    assert resp.headers["location"].startswith("/login?next=")
            else:
                assert anon.post(path, {}, csrf=False).status == 401, path


def test_each_role_sees_only_its_menu(console: Console) -> None:
    for role in ROLES:
        page = console.as_role(role).get("/").text
        nav = re.search(r"<nav>(.*?)</nav>", page, re.S)
        assert nav
        links = set(re.findall(r'href="([^"]+)"', nav.group(1)))
        expected = {p.path for p in ROUTES if p.nav and role in p.roles}
        assert links == expected, role
    assert "/policy" not in {p.path for p in ROUTES if p.nav and "auditor" in p.roles}


def test_overview_shows_violations_chart_to_security_roles_only(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    send_batches(
        host,
        console.running.address,
        [batch(host.events(3, network=events_pb2.Network(action="link_up", violation=True)))],
    )
    assert "<svg" not in console.as_role("sysadmin").get("/").text
    for role in ("secadmin", "auditor"):
        page = console.as_role(role).get("/").text
        assert "<svg" in page
        assert "<script" not in page.split("</head>")[1]  # no inline script anywhere


def test_the_audit_trail_is_the_auditors_alone(console: Console) -> None:
    sue, aud = console.as_role("secadmin"), console.as_role("auditor")
    first = next(e for e in console.audit() if e.console_action.action == "login")
    own = f"/events/_collector/{first.seq}"
    assert aud.get(own).status == 200
    assert sue.get(own).status == 403
    assert sue.get("/events?kind=console_action").status == 400
    assert "console_action" not in sue.get("/events").text
    assert "kind_console_action" not in sue.get("/events").text
    page = sue.get("/events?host=_collector").text
    assert "/events/_collector/" not in page  # the logins are there, but not for her
    assert "/events/_collector/" in aud.get("/events?host=_collector").text
