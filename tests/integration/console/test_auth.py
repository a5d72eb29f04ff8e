"""Logins, sessions, CSRF tokens, lockout, and the two-person account flow."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from collector.console import ConsoleConfig, auth
from collector.console.auth import create_account
from collector.ingest import now_us
from collector.store import Store
from tests.integration.console.conftest import PASSWORD, Console, start_console
from tests.integration.console.web import CSRF_RE, Client


def _actions(console: Console, action: str) -> list[object]:
    return [e.console_action for e in console.audit() if e.console_action.action == action]


def test_session_cookie_is_httponly_and_samesite_strict(console: Console) -> None:
    c = console.client()
    c.get("/login")
    resp = c.login("sam", PASSWORD)
    cookie = next(h for h in resp.header_all("set-cookie") if h.startswith("baomi_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    # Only the token's hash is stored: the cookie value is not in the database.
    token = cookie.split(";")[0].split("=", 1)[1]
    assert console.store.session(auth.token_hash(token)) is not None
    assert console.store.session(token.encode()) is None


def test_form_post_without_csrf_token_is_refused(console: Console) -> None:
    sec = console.as_role("secadmin")
    before = console.store.policy_versions()
    edited = {"file:policy.csv": "p, role:staff, /srv/secret/shared/**, read, allow\n"}
    assert sec.post("/policy/save", edited, csrf=False).status == 403
    assert sec.post("/policy/save", {**edited, "csrf": "forged"}, csrf=False).status == 403
    assert console.store.policy_versions() == before
    refused = _actions(console, "csrf_refused")
    assert [(a.actor, a.role, a.ok) for a in refused] == [("sue", "secadmin", False)] * 2
    # A fetch may send the token in a header instead.
    resp = sec.post(
        "/accounts/grant",
        {"name": "nobody", "role": "auditor"},
        csrf=False,
        headers={"X-CSRF-Token": sec.csrf},
    )
    assert resp.status == 400  # past the CSRF check: there is no such account


def test_login_form_needs_its_csrf_token(console: Console) -> None:
    c = console.client()
    resp = c.request("POST", "/login", {"name": "sam", "password": PASSWORD, "csrf": "x"})
    assert resp.status == 403
    assert _actions(console, "csrf_refused")[0].target == "POST /login"  # type: ignore[attr-defined]


def test_lockout_after_five_failures(console: Console) -> None:
    c = console.client()
    for _ in range(auth.LOCKOUT_FAILURES - 1):
        assert c.login("sam", "wrong-password-x").status == 401
    resp = c.login("sam", "wrong-password-x")
    assert resp.status == 401 and "15" in resp.text
    assert console.store.account("sam").locked_until_us > now_us()  # type: ignore[union-attr]
    # Locked: even the right password is refused, and says so only as "locked".
    assert c.login("sam", PASSWORD).status == 401
    failed = _actions(console, "login_failed")
    assert len(failed) == auth.LOCKOUT_FAILURES + 1
    assert all(a.actor == "sam" and a.role == "sysadmin" and not a.ok for a in failed)  # type: ignore[attr-defined]
    assert "locked for 15 min" in failed[auth.LOCKOUT_FAILURES - 1].detail  # type: ignore[attr-defined]
    assert failed[-1].detail == "locked"  # type: ignore[attr-defined]
    # Unknown names are recorded too, without a role.
    assert c.login("mallory", "whatever-password").status == 401
    assert _actions(console, "login_failed")[-1].role == ""  # type: ignore[attr-defined]


def test_lock_expires(store: Store) -> None:
    create_account(store, "eve", role="auditor", by="t", password=PASSWORD)
    for _ in range(auth.LOCKOUT_FAILURES):
        assert not auth.authenticate(store, "eve", "nope-nope-nope").ok
    assert auth.authenticate(store, "eve", PASSWORD).reason == "locked"
    store.login_failed("eve", now_us() - 10**12, 1, 0)  # as if the lock ran out long ago
    assert auth.authenticate(store, "eve", PASSWORD).ok


def test_idle_session_ends(store: Store) -> None:
    create_account(store, "eve", role="auditor", by="t", password=PASSWORD)
    token, row = auth.start_session(store, "eve")
    assert auth.resume_session(store, token) is not None
    store.touch_session(row.token_hash, now_us() - (auth.SESSION_IDLE_SECONDS + 1) * 10**6)
    assert auth.resume_session(store, token) is None
    assert store.session(row.token_hash) is None


def test_sysadmin_creates_secadmin_grants_nobody_alone(console: Console) -> None:
    sam, sue = console.as_role("sysadmin"), console.as_role("secadmin")
    # The security administrator cannot create accounts, the system administrator
    # cannot grant roles.
    assert sue.post("/accounts/new", {"name": "newbie"}).status == 403
    resp = sam.post("/accounts/new", {"name": "newbie"})
    assert resp.status == 200
    password = resp.text.split('<pre id="new-password">')[1].split("</pre>")[0]
    assert console.store.account("newbie").role is None  # type: ignore[union-attr]
    assert sam.post("/accounts/grant", {"name": "newbie", "role": "sysadmin"}).status == 403
    # Without a role the account cannot log in.
    newbie = console.client()
    resp = newbie.login("newbie", password)
    assert resp.status == 401 and "尚未授权角色" in resp.text
    assert sue.post("/accounts/grant", {"name": "newbie", "role": "auditor"}).status == 303
    # One role, once: a second grant is refused.
    assert sue.post("/accounts/grant", {"name": "newbie", "role": "secadmin"}).status == 400
    assert console.store.account("newbie").role == "auditor"  # type: ignore[union-attr]
    # First login: the password the administrator saw must be replaced before anything.
    resp = newbie.login("newbie", password)
    assert resp.headers["location"] == "/password"
    assert newbie.get("/events").status == 303
    newbie.refresh_csrf()
    new = "my-own-long-password"
    resp = newbie.post("/password", {"current": password, "new": new, "confirm": new})
    assert resp.status == 303
    newbie.jar.clear()
    assert newbie.login("newbie", new).status == 303
    assert newbie.get("/events").status == 200
    actions = [(a.action, a.actor, a.role, a.target) for a in map(_ca, console.audit())]
    assert ("account_create", "sam", "sysadmin", "newbie") in actions
    assert ("role_grant", "sue", "secadmin", "newbie") in actions
    assert ("password_change", "newbie", "auditor", "newbie") in actions


def _ca(event: object) -> object:
    return event.console_action  # type: ignore[attr-defined]


def test_language_switch(console: Console) -> None:
    c = console.as_role("auditor")
    assert "审计日志" in c.get("/audit").text
    resp = c.get("/lang?to=en&next=/audit")
    assert resp.status == 303 and resp.headers["location"] == "/audit"
    assert "Audit log" in c.get("/audit").text
    # No open redirect through next=.
    assert c.get("/lang?to=zh&next=//evil.example/").headers["location"] == "/"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_tls_console_sets_secure_host_cookie(store: Store, pki_dir: Path) -> None:
    create_account(store, "sam", role="sysadmin", by="t", password=PASSWORD)
    running = start_console(
        store,
        pki_dir,
        console=ConsoleConfig(
            listen="127.0.0.1:0", cert=pki_dir / "server.pem", key=pki_dir / "server.key"
        ),
    )
    try:
        ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
        c = Client(f"https://127.0.0.1:{running.collector.ports['console']}", ssl_context=ctx)
        page = c.get("/login")
        assert "max-age" in page.headers["strict-transport-security"]
        token = CSRF_RE.search(page.text)
        assert token
        resp = c.request(
            "POST", "/login", {"csrf": token.group(1), "name": "sam", "password": PASSWORD}
        )
        cookie = next(h for h in resp.header_all("set-cookie") if "baomi_session" in h)
        assert cookie.startswith("__Host-baomi_session=") and "Secure" in cookie
    finally:
        running.stop()
