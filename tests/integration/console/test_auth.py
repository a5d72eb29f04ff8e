"""Logins, sessions, CSRF tokens, guessing limits, and the two-person account flow."""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import time
from pathlib import Path

import pytest

from collector.console import ConsoleConfig, auth, ratelimit
from collector.console.auth import create_account
from collector.console.i18n import translate
from collector.ingest import now_us
from collector.store import Store
from tests.integration.console.conftest import PASSWORD, Console, start_console
from tests.integration.console.web import CSRF_RE, Client, Resp


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


def test_login_token_is_issued_fresh_and_signed(console: Console) -> None:
    """A token another site planted as the login cookie is neither adopted by GET /login
    nor accepted by POST /login; one signed here but expired is refused too."""
    c = console.client()
    planted = "planted-by-a-sibling-site-0123456789"
    c.jar.set_cookie(_cookie("baomi_login", planted))
    page = c.get("/login")
    token = CSRF_RE.search(page.text)
    assert token and token.group(1) != planted
    sent = [h for h in page.header_all("set-cookie") if h.startswith("baomi_login=")]
    assert sent == [sent[0]] and sent[0].startswith(f"baomi_login={token.group(1)};")
    # The planted value sent as both cookie and form field (double submit) is refused.
    forged = console.client()
    forged.jar.set_cookie(_cookie("baomi_login", planted))
    form = {"csrf": planted, "name": "sam", "password": PASSWORD}
    assert forged.request("POST", "/login", form).status == 403
    secret = b"x" * 32
    old = auth.login_token(secret, now_s=1_000_000)
    assert auth.login_token_ok(secret, old, old, now_s=1_000_000)
    assert not auth.login_token_ok(secret, old, old, now_s=1_000_000 + auth.LOGIN_TOKEN_SECONDS + 1)
    assert not auth.login_token_ok(b"y" * 32, old, old, now_s=1_000_000)


def _cookie(name: str, value: str) -> http.cookiejar.Cookie:
    return http.cookiejar.Cookie(
        0,
        name,
        value,
        None,
        False,
        "127.0.0.1",
        False,
        False,
        "/",
        True,
        False,
        None,
        False,
        None,
        None,
        {},
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_cross_site_login_post_is_refused_same_origin_null_is_not(console: Console) -> None:
    def attempt(headers: dict[str, str]) -> int:
        c = console.client()
        token = CSRF_RE.search(c.get("/login").text)
        assert token
        form = {"csrf": token.group(1), "name": "sam", "password": PASSWORD}
        return c.request("POST", "/login", form, headers=headers).status

    assert attempt({"Sec-Fetch-Site": "same-site"}) == 403  # a sibling origin
    assert attempt({"Sec-Fetch-Site": "cross-site"}) == 403
    assert attempt({"Origin": "http://evil.example"}) == 403
    # Referrer-Policy no-referrer: Chromium may send Origin: null on our own forms.
    assert attempt({"Origin": "null"}) == 303
    assert attempt({"Sec-Fetch-Site": "same-origin", "Origin": "null"}) == 303
    assert attempt({"Sec-Fetch-Site": "none"}) == 303


def _error(resp: Resp) -> tuple[int, str]:
    """Status and error line of a login or password page (not its fresh token)."""
    found = re.search(r'<p class="error"[^>]*>([^<]*)</p>', resp.text)
    return resp.status, found.group(1) if found else ""


def _wait(seconds: int) -> str:
    return translate("zh", "login_wait", s=seconds)


def test_guessing_waits_longer_each_time_and_recovers_alone(console: Console) -> None:
    c = console.client()
    for _ in range(ratelimit.NAME_FREE - 1):
        assert _error(c.login("sam", "wrong-password-x")) == (401, "账号或密码错误。")
    assert _error(c.login("sam", "wrong-password-x")) == (429, _wait(1))
    # While waiting even the right password is not checked.
    assert c.login("sam", PASSWORD).status == 429
    time.sleep(1.2)
    assert _error(c.login("sam", "wrong-password-x")) == (429, _wait(2))
    time.sleep(2.2)
    # No administrator needed: after the wait the right password works.
    assert c.login("sam", PASSWORD).status == 303
    failed = _actions(console, "login_failed")
    assert [a.detail for a in failed] == [  # type: ignore[attr-defined]
        *["wrong password"] * (ratelimit.NAME_FREE - 1),
        "wrong password; waiting 1 s",
        "waiting 1 s",
        "wrong password; waiting 2 s",
    ]
    assert all(a.actor == "sam" and a.role == "sysadmin" and not a.ok for a in failed)  # type: ignore[attr-defined]
    # Unknown names are recorded too, without a role.
    assert console.client().login("mallory", "whatever-password").status == 401
    assert _actions(console, "login_failed")[-1].role == ""  # type: ignore[attr-defined]


def test_unknown_disabled_and_waiting_names_answer_alike(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long first wait: on a loaded machine a 1 s wait can run out between two
    # attempts, and the next is then a fresh failure with a longer wait.
    monkeypatch.setattr(ratelimit, "FIRST_WAIT_S", 30)
    create_account(console.store, "dora", role="auditor", by="t", password=PASSWORD)
    assert console.store.disable_account("dora", "t", now_us())
    answers = {}
    for name, password in [
        ("sam", "wrong-password-x"),  # a real account, wrong password
        ("mallory", "wrong-password-x"),  # nobody
        ("dora", PASSWORD),  # disabled, the right password
    ]:
        console.store.backoff_clear("addr:127.0.0.1")  # each name from a fresh address
        c = console.client()
        answers[name] = [_error(c.login(name, password)) for _ in range(ratelimit.NAME_FREE + 1)]
    assert answers["sam"] == answers["mallory"] == answers["dora"]
    assert answers["sam"][-1] == (429, _wait(30))
    # The audit log (for the auditor, not the answer) tells them apart.
    first: dict[str, str] = {}
    for a in _actions(console, "login_failed"):
        first.setdefault(a.actor, a.detail)  # type: ignore[attr-defined]
    assert first == {"sam": "wrong password", "mallory": "unknown name", "dora": "disabled"}


def test_one_client_guessing_many_names_waits(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "FIRST_WAIT_S", 30)  # outlasts a loaded machine's pauses
    c = console.client()
    for i in range(ratelimit.ADDRESS_FREE - 1):
        assert c.login(f"guess{i}", "wrong-password-x").status == 401
    assert c.login("guessx", "wrong-password-x").status == 429
    # A fresh name from the same address waits too; the name itself has no failures.
    resp = c.login("sam", PASSWORD)
    assert resp.status == 429
    assert console.store.backoff("name:sam") is None


def test_wait_doubles_up_to_a_cap_and_is_forgotten(store: Store) -> None:
    waits = [ratelimit.wait_after(n, 3) for n in range(1, 14)]
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    key = [ratelimit.name_key("eve")]
    t = now_us()
    for _ in range(3):
        ratelimit.failed(store, key, t)
    assert ratelimit.wait_s(store, key, t) == 1
    assert ratelimit.wait_s(store, key, t + 1_000_001) == 0
    # An hour later the count starts again.
    later = t + (ratelimit.FORGET_S + 1) * 1_000_000
    assert store.backoff_failed("name:eve", later, ratelimit.FORGET_S * 1_000_000) == 1


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
    # Changed: 303 and no password. The creator must not know any credential of it.
    assert resp.status == 303
    assert "new-password" not in sam.get("/accounts").text
    assert console.store.account("newbie").role is None  # type: ignore[union-attr]
    assert sam.post("/accounts/grant", {"name": "newbie", "role": "sysadmin"}).status == 403
    # Changed: the grant answers 200 with the one-time password, for the grantor only.
    resp = sue.post("/accounts/grant", {"name": "newbie", "role": "auditor"})
    assert resp.status == 200
    password = resp.text.split('<pre id="new-password">')[1].split("</pre>")[0]
    # One role, once: a second grant is refused.
    resp = sue.post("/accounts/grant", {"name": "newbie", "role": "secadmin"})
    assert resp.status == 400 and "revoke it first" in resp.text
    assert console.store.account("newbie").role == "auditor"  # type: ignore[union-attr]
    # First login: the one-time password must be replaced before anything.
    newbie = console.client()
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


def test_account_without_role_cannot_log_in(console: Console) -> None:
    create_account(console.store, "newbie", role=None, by="t", password=PASSWORD)
    resp = console.client().login("newbie", PASSWORD)
    assert resp.status == 401 and "尚未授权角色" in resp.text


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
        # Every cookie is __Host-: the login form's and the language's too.
        assert [h.split("=")[0] for h in page.header_all("set-cookie")] == ["__Host-baomi_login"]
        lang = c.get("/lang?to=en").header_all("set-cookie")
        assert lang and lang[0].startswith("__Host-baomi_lang=") and "Secure" in lang[0]
        c.refresh_csrf()
        assert c.get("/").status == 200
        # Logout deletes the session cookie with the attributes it was set with, so the
        # browser really drops it (a deletion without Secure is ignored for __Host-).
        out = c.post("/logout")
        assert out.status == 303
        gone = next(h for h in out.header_all("set-cookie") if "baomi_session" in h)
        assert gone.startswith("__Host-baomi_session=") and "Secure" in gone
        assert "Max-Age=0" in gone and "Path=/" in gone and "Domain" not in gone
        assert not any("baomi_session" in k.name for k in c.jar)
        assert c.get("/").status == 303
    finally:
        running.stop()
