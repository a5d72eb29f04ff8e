"""One's own session: logging in and out, changing one's password, and the language."""

from __future__ import annotations

from baomi.v1 import events_pb2
from starlette.responses import RedirectResponse, Response

from collector.console import auth, ratelimit
from collector.console.app import LANG_COOKIE, LOGIN_COOKIE, Ctx, _local
from collector.console.errors import ConsoleError
from collector.console.i18n import LANGS
from collector.ingest import now_us
from collector.store.base import SessionRow


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


async def switch_lang(c: Ctx) -> Response:
    """Choose the language (a preference cookie; nothing on the server changes)."""
    lang = c.request.query_params.get("to", "zh")
    response = RedirectResponse(_local(c.request.query_params.get("next", "/")), status_code=303)
    if lang in LANGS:
        c.console.cookie(response, c.console.cookie_name(LANG_COOKIE), lang, 365 * 86_400)
    return response
