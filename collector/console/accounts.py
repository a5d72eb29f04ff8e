"""Account lifecycle and the own-account pages: login, logout, password change.

Separation of duties (三员分立) that survives a malicious administrator:
- a system administrator creates an account, without a role and without learning any
  password of it (the one it is created with is never shown);
- a security administrator grants its one role, which sets a fresh one-time password
  shown only to them, to hand to the person, and ends every earlier credential and
  session of the account; the person must change it at first login;
- the security administrator also revokes roles, resets passwords (a new one-time one),
  disables, enables and unlocks (clears the guessing wait);
- the last enabled account of a role can be neither disabled nor revoked.

The operations below are shared by the console and ``baomi-collector user``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from baomi.v1 import events_pb2
from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector.console import auth, ratelimit
from collector.console.app import LOGIN_COOKIE, Ctx, _local
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.ingest import now_us
from collector.store.base import ROLES, AccountRow, SessionRow, Store

SYS, SEC = "sysadmin", "secadmin"
T = TypeVar("T")


# ------------------------------------------------------------------ operations


def _existing(store: Store, name: str) -> AccountRow:
    account = store.account(auth.check_name(name))
    if account is None:
        raise ConsoleError(f"no account is named {name!r}: see the list of accounts")
    return account


def _last_of_role(store: Store, account: AccountRow) -> ConsoleError:
    return ConsoleError(
        f"{account.name} is the last enabled {account.role}: grant that role to another "
        "account first, so that the role is never left without anyone"
    )


def grant(store: Store, name: str, role: str, by: str) -> str:
    """Give ``role`` to ``name``; its new one-time password (earlier ones and every
    session end)."""
    auth.check_role(role)
    account = _existing(store, name)
    if account.role is not None:
        raise ConsoleError(
            f"{name} has a role already ({account.role}); one role each: revoke it first"
        )
    if account.disabled:
        raise ConsoleError(f"{name} is disabled: enable it first")
    password = auth.generate_password()
    if not store.grant_role(name, role, by, now_us(), auth.hash_password(password)):
        raise ConsoleError(f"{name} changed meanwhile: look at the list again")
    ratelimit.unlock(store, name)
    return password


def reset(store: Store, name: str) -> str:
    """A new one-time password for ``name``, which must change it at next login; every
    session ends."""
    account = _existing(store, name)
    if account.role is None:
        raise ConsoleError(f"{name} has no role: granting one sets its first password")
    if account.disabled:
        raise ConsoleError(f"{name} is disabled: enable it first")
    password = auth.generate_password()
    store.set_password(name, auth.hash_password(password), must_change=True)
    store.end_sessions(name=name)
    ratelimit.unlock(store, name)
    return password


def revoke(store: Store, name: str) -> str:
    """Take ``name``'s role (its sessions end); the role it had."""
    account = _existing(store, name)
    if account.role is None:
        raise ConsoleError(f"{name} has no role to revoke")
    if not store.revoke_role(name):
        raise _last_of_role(store, account)
    return account.role


def disable(store: Store, name: str, by: str) -> None:
    """Disable ``name``: it cannot log in and its sessions end."""
    account = _existing(store, name)
    if account.disabled:
        raise ConsoleError(f"{name} is disabled already")
    if not store.disable_account(name, by, now_us()):
        raise _last_of_role(store, account)


def enable(store: Store, name: str) -> None:
    """Enable a disabled account."""
    _existing(store, name)
    if not store.enable_account(name):
        raise ConsoleError(f"{name} is not disabled")


def unlock(store: Store, name: str) -> bool:
    """Clear ``name``'s guessing wait; True when it had failed attempts counted."""
    _existing(store, name)
    return ratelimit.unlock(store, name)


def wait_of(store: Store, name: str) -> int:
    """Seconds a login under ``name`` must still wait."""
    return ratelimit.wait_s(store, [ratelimit.name_key(name)], now_us())


# ------------------------------------------------------------------ account pages


async def accounts(c: Ctx) -> Response:
    """Accounts: a system administrator creates, a security administrator manages."""
    return await _page(c)


async def _page(c: Ctx, secret: tuple[str, str] | None = None) -> HTMLResponse:
    def rows() -> list[tuple[AccountRow, str, int]]:
        return [
            (a, format_time(a.created_us, c.console.tz), wait_of(c.store, a.name))
            for a in c.store.accounts()
        ]

    return c.render(
        "accounts.html",
        accounts=await c.run(rows),
        secret=secret,
        roles=ROLES,
        can_create=c.user is not None and c.user.role == SYS,
        can_manage=c.user is not None and c.user.role == SEC,
    )


def _by(c: Ctx) -> str:
    if c.user is None:  # guard() runs handlers only for a logged-in user
        raise ConsoleError("log in first")
    return c.user.name


async def account_create(c: Ctx) -> Response:
    """A new account without a role. Its password is never shown: the creator must not
    know any credential of it (granting a role sets the first usable one)."""
    name = (await c.field("name", 32)).strip()
    account, _ = await c.run(
        lambda: auth.create_account(c.store, name, role=None, by=_by(c), must_change=True)
    )
    await c.audit(
        "account_create", account.name, "no role until a security administrator grants one"
    )
    return RedirectResponse("/accounts", status_code=303)


async def _audited(c: Ctx, action: str, name: str, detail: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the store threads; audit it, refused or done."""
    try:
        result = await c.run(fn)
    except ConsoleError as e:
        await c.audit(action, name, str(e), ok=False)
        raise
    await c.audit(action, name, detail)
    return result


async def account_grant(c: Ctx) -> Response:
    """Grant a role: the page shows the new one-time password to hand over, once."""
    name = (await c.field("name", 32)).strip()
    role = auth.check_role(await c.field("role", 20))
    password = await _audited(
        c,
        "role_grant",
        name,
        f"{role}; one-time password set, earlier credentials and sessions ended",
        lambda: grant(c.store, name, role, _by(c)),
    )
    return await _page(c, (name, password))


async def account_reset(c: Ctx) -> Response:
    """Reset a password: the page shows the new one-time password, once."""
    name = (await c.field("name", 32)).strip()
    password = await _audited(
        c,
        "password_reset",
        name,
        "one-time password set, sessions ended",
        lambda: reset(c.store, name),
    )
    return await _page(c, (name, password))


async def account_revoke(c: Ctx) -> Response:
    """Take an account's role."""
    name = (await c.field("name", 32)).strip()
    await _audited(c, "role_revoke", name, "sessions ended", lambda: revoke(c.store, name))
    return RedirectResponse("/accounts", status_code=303)


async def account_disable(c: Ctx) -> Response:
    """Disable an account."""
    name = (await c.field("name", 32)).strip()
    await _audited(
        c, "account_disable", name, "sessions ended", lambda: disable(c.store, name, _by(c))
    )
    return RedirectResponse("/accounts", status_code=303)


async def account_enable(c: Ctx) -> Response:
    """Enable a disabled account."""
    name = (await c.field("name", 32)).strip()
    await _audited(c, "account_enable", name, "", lambda: enable(c.store, name))
    return RedirectResponse("/accounts", status_code=303)


async def account_unlock(c: Ctx) -> Response:
    """Clear an account's guessing wait."""
    name = (await c.field("name", 32)).strip()
    await _audited(
        c, "account_unlock", name, "guessing wait cleared", lambda: unlock(c.store, name)
    )
    return RedirectResponse("/accounts", status_code=303)


# ------------------------------------------------------------------ own account


def _wait_message(c: Ctx, wait_s: int) -> str:
    return c.t("login_wait", s=wait_s)


async def password(c: Ctx) -> Response:
    """Change one's own password (required after an administrator set it). A wrong
    current password counts as a failed login of the account and the client."""
    if c.request.method == "GET":
        return c.render("password.html", error="")
    if c.user is None:
        raise ConsoleError("log in first")
    account = c.user.account
    attempt = ratelimit.keys(account.name, c.client)
    wait = await c.run(ratelimit.wait_s, c.store, attempt, now_us())
    if wait:
        await c.audit("password_change", account.name, f"waiting {wait} s", ok=False)
        return c.render("password.html", status=429, error=_wait_message(c, wait))
    current = await c.field("current", auth.PASSWORD_MAX_CHARS)
    new = await c.field("new", auth.PASSWORD_MAX_CHARS)
    if not await c.run(auth.verify_password, account.password_hash, current):
        wait = await c.run(ratelimit.failed, c.store, attempt, now_us())
        await c.audit("password_change", account.name, "current password wrong", ok=False)
        error = _wait_message(c, wait) if wait else c.t("password_wrong")
        return c.render("password.html", status=429 if wait else 400, error=error)
    if new != await c.field("confirm", auth.PASSWORD_MAX_CHARS) or new == current:
        return c.render("password.html", status=400, error=c.t("password_mismatch"))
    try:
        auth.check_password(new)
    except ConsoleError:
        return c.render(
            "password.html", status=400, error=c.t("password_short", n=auth.PASSWORD_MIN_CHARS)
        )
    digest = await c.run(auth.hash_password, new)

    def save() -> tuple[str, SessionRow]:
        c.store.set_password(account.name, digest, must_change=False)
        c.store.end_sessions(name=account.name)  # every other browser logs in again
        return auth.start_session(c.store, account.name)

    token, _ = await c.run(save)
    await c.audit("password_change", account.name)
    response = RedirectResponse("/", status_code=303)
    c.console.cookie(response, c.console.session_cookie, token, None)
    return response


async def logout(c: Ctx) -> Response:
    """End the session, and delete its cookie as it was set."""
    token = c.request.cookies.get(c.console.session_cookie, "")
    await c.run(lambda: c.store.end_sessions(token_hash=auth.token_hash(token)))
    await c.audit("logout")
    response = RedirectResponse("/login", status_code=303)
    c.console.drop_cookie(response, c.console.session_cookie)
    return response


async def login(c: Ctx) -> Response:
    """The login form, and logging in (guessing slowed per name and per client)."""
    request, console = c.request, c.console
    next_page = _local(request.query_params.get("next", "/"))
    login_cookie = console.cookie_name(LOGIN_COOKIE)
    if request.method == "GET":
        if c.user is not None:
            return RedirectResponse(next_page, status_code=303)
        # Always a fresh token: one already in a cookie may have been planted.
        return _login_form(c, next_page, auth.login_token(console.login_secret), "", 200)
    name = (await c.field("name", 64)).strip()
    if auth.cross_site(request.headers) or not auth.login_token_ok(
        console.login_secret, request.cookies.get(login_cookie, ""), await c.field("csrf", 200)
    ):
        await c.audit(
            "csrf_refused",
            "POST /login",
            ok=False,
            actor=name,
            role="",
            severity=events_pb2.SEVERITY_MEDIUM,
        )
        return c.error(403, c.t("csrf_refused"))
    password = await c.field("password", 1000)
    result = await c.run(auth.authenticate, c.store, name, password, c.client)
    role = result.account.role or "" if result.account else ""
    if not result.ok:
        await c.audit(
            "login_failed",
            name,
            result.detail,
            ok=False,
            actor=name,
            role=role,
            # A failure that starts a wait is a guessing pattern worth a look.
            severity=events_pb2.SEVERITY_MEDIUM if result.wait_s else events_pb2.SEVERITY_LOW,
        )
        if result.reason == "no_role":
            message, status = c.t("login_no_role"), 401
        elif result.wait_s:
            message, status = _wait_message(c, result.wait_s), 429
        else:
            message, status = c.t("login_failed"), 401
        token = auth.login_token(console.login_secret)
        return _login_form(c, next_page, token, message, status)
    token, _ = await c.run(auth.start_session, c.store, name)
    await c.audit("login", name, actor=name, role=role)
    must_change = result.account is not None and result.account.must_change
    done = RedirectResponse("/password" if must_change else next_page, status_code=303)
    console.cookie(done, console.session_cookie, token, None)
    console.drop_cookie(done, login_cookie)
    return done


def _login_form(c: Ctx, next_page: str, token: str, error: str, status: int) -> Response:
    response = c.render("login.html", status=status, error=error, token=token, next_page=next_page)
    c.console.cookie(response, c.console.cookie_name(LOGIN_COOKIE), token, auth.LOGIN_TOKEN_SECONDS)
    return response
