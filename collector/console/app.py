"""The console's web application: request context, the role guard, security headers.

Every page is a row of the route table in :mod:`collector.console.routes` naming the
roles that may use it, served by :func:`create_app`; :func:`guard` checks the session,
the role and (for anything but GET) the CSRF token on the server before the handler
runs, and records refusals in the audit log. Nothing about access is decided in the
browser.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from baomi import display
from baomi.v1 import events_pb2
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.console import auth
from collector.console.alerts import AlertSender
from collector.console.backend import Backend
from collector.console.errors import ConsoleError
from collector.console.feed import LiveFeed
from collector.console.i18n import LANGS, translate
from collector.store.base import ROLES, AccountRow, SessionRow

_logger = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).parent
MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body; policy files are at most 1 MiB each
MAX_FORM_FIELDS = 200
STORE_THREADS = 4  # threads (and so database connections) for the console's store calls
DEFAULT_TZ = "Asia/Shanghai"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
LANG_COOKIE = "baomi_lang"
LOGIN_COOKIE = "baomi_login"  # double-submit CSRF token of the login form
ID_MAX = 2**63 - 1  # a seq or id: the stores' signed 64-bit columns
ID_DIGITS = len(str(ID_MAX))
USER_AGENT_CHARS = 300  # of a User-Agent kept in the audit log: it is what the client says

SYS, SEC, AUD = "sysadmin", "secadmin", "auditor"  # the three roles (三员分立)
ALL = frozenset(ROLES)

# script-src 'self' and no 'unsafe-inline': markup injected through event data cannot
# run, even if escaping were ever missed. The SVG charts use attributes, not style.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class User:
    """The logged-in account and its session."""

    account: AccountRow
    session: SessionRow

    @property
    def name(self) -> str:
        """Account name."""
        return self.account.name

    @property
    def role(self) -> str:
        """Its one role (sessions exist only for accounts with one)."""
        return self.account.role or ""


class Console:
    """Everything the pages share: the collector's parts, the feed, alerts, templates,
    settings."""

    def __init__(self, backend: Backend, *, tls: bool) -> None:
        self.backend = backend
        self.store = backend.store
        self.tls = tls
        # Store calls run on a few threads of their own: each thread holds a database
        # connection, so a busy console must not open one per request.
        self.executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="console-store")
        self.feed = LiveFeed(
            backend.store,
            lambda: dict(backend.ingest.writer.heads),
            backend.chain,
            self.run,
            leads=backend.ingest.lead,
        )
        self.alerts = AlertSender()
        self.feed.sinks.append(self.alerts.offer)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template, whatever its name
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=display.finalize,  # control and bidi characters shown as escapes
        )
        self.env.filters["lines"] = display.Lines
        self.settings: dict[str, str] = {}
        self.metrics_token: str | None = None  # /metrics answers 404 without one
        self.tz = ZoneInfo(DEFAULT_TZ)
        # __Host-: the browser sends it only to this origin over TLS, never set by a
        # sibling domain; without TLS the prefix is not allowed.
        self.session_cookie = self.cookie_name("baomi_session")
        # Signs login form tokens; a restart only makes open login forms load again.
        self.login_secret = secrets.token_bytes(32)
        self.pages: Sequence[Page] = ()  # the route table create_app serves; the menu's source

    def cookie_name(self, name: str) -> str:
        """``name`` with the __Host- prefix under TLS (Secure, Path=/, no Domain: no
        sibling site can set or shadow it)."""
        return f"__Host-{name}" if self.tls else name

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the console's store threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def load_settings(self) -> None:
        """Read stored settings and apply them (time zone, alert targets)."""
        self.settings = self.store.settings()
        try:
            self.tz = ZoneInfo(self.settings.get("timezone") or DEFAULT_TZ)
        except (ZoneInfoNotFoundError, ValueError):
            _logger.warning("unknown time zone %r; using %s", self.settings["timezone"], DEFAULT_TZ)
            self.tz = ZoneInfo(DEFAULT_TZ)
        try:
            self.alerts.configure(
                self.settings.get("webhooks", "").splitlines(), self.settings.get("syslog")
            )
        except ConsoleError as e:
            _logger.error("alert settings not applied: %s", e)

    def cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        """Set a cookie the way every console cookie is set."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.tls,
            httponly=True,
            samesite="strict",
        )

    def drop_cookie(self, response: Response, name: str) -> None:
        """Delete a cookie with the attributes it was set with (a browser keeps a
        __Host- cookie whose deletion lacks Secure)."""
        response.delete_cookie(name, path="/", secure=self.tls, httponly=True, samesite="strict")


@dataclass
class Ctx:
    """One request as a handler sees it."""

    console: Console
    request: Request
    user: User | None
    lang: str
    _form: FormData | None = field(default=None, repr=False)

    @property
    def store(self) -> Any:
        """The collector's store."""
        return self.console.store

    @property
    def account(self) -> AccountRow:
        """The logged-in account (guard() runs handlers only for a logged-in user)."""
        if self.user is None:
            raise ConsoleError("log in first")
        return self.user.account

    @property
    def client(self) -> str:
        """The client's address as the connection shows it (no proxy is trusted)."""
        return self.request.client.host if self.request.client else ""

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the console's store threads."""
        return await self.console.run(fn, *args, **kwargs)

    def t(self, key: str, **values: object) -> str:
        """A message in the request's language."""
        return translate(self.lang, key, **values)

    async def form(self) -> FormData:
        """The posted form (read once, bounded)."""
        if self._form is None:
            self._form = await self.request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        return self._form

    async def field(self, name: str, limit: int = 200) -> str:
        """One text field of the posted form, at most ``limit`` characters."""
        value = (await self.form()).get(name, "")
        if not isinstance(value, str):
            raise ConsoleError(f"field {name!r} must be text")
        if len(value) > limit:
            raise ConsoleError(f"field {name!r} is longer than {limit} characters")
        if "\x00" in value:  # PostgreSQL text cannot hold one: refused, not a 500 there
            raise ConsoleError(f"field {name!r} holds a NUL character: remove it")
        return value

    async def audit(
        self,
        action: str,
        target: str = "",
        detail: str = "",
        *,
        ok: bool = True,
        severity: int = events_pb2.SEVERITY_INFO,
        actor: str | None = None,
        role: str | None = None,
    ) -> None:
        """Record a console action in the collector's chain before answering."""
        await self.console.backend.chain.console_action(
            actor=actor if actor is not None else (self.user.name if self.user else ""),
            role=role if role is not None else (self.user.role if self.user else ""),
            action=action,
            target=target,
            detail=detail,
            ok=ok,
            severity=severity,
            client=self.client,
            user_agent=self.request.headers.get("user-agent", "")[:USER_AGENT_CHARS],
        )

    def render(self, template: str, status: int = 200, **values: object) -> HTMLResponse:
        """A page from ``template`` with the common values."""
        page = self.console.env.get_template(template).render(
            t=self.t,
            lang=self.lang,
            user=self.user,
            csrf=self.user.session.csrf if self.user else "",
            nav=nav_for(self.console.pages, self.user.role) if self.user else [],
            path=self.request.url.path,
            here=_local(str(self.request.url.path) + _query(self.request)),
            **values,
        )
        return HTMLResponse(page, status_code=status)

    def error(self, status: int, message: str) -> HTMLResponse:
        """An error page."""
        return self.render("error.html", status=status, status_code=status, message=message)


def parse_id(text: str) -> int | None:
    """A seq or id from a form: ASCII digits for 1 to ID_MAX; None for anything else."""
    if 0 < len(text) <= ID_DIGITS and text.isascii() and text.isdigit():
        number = int(text)
        return number if 0 < number <= ID_MAX else None
    return None


def form_id(text: str, name: str) -> int:
    """``parse_id``, or ConsoleError saying what a valid ``name`` is."""
    number = parse_id(text)
    if number is None:
        raise ConsoleError(f"{name} {text[:24]!r} is not a whole number from 1 to {ID_MAX}")
    return number


class IdConvertor(Convertor[int]):
    """``{name:id}`` in a route: any run of digits, so that a number no store column
    holds reaches :func:`guard`, which answers 400 (ID_MAX + 1 stands for every number
    too long to convert: int() refuses more than 4300 digits)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        """The id as a number (ID_MAX + 1 when it has more digits than ID_MAX)."""
        digits = value.lstrip("0")
        return int(digits or "0") if len(digits) <= ID_DIGITS else ID_MAX + 1

    def to_string(self, value: int) -> str:
        """The id as it appears in a path."""
        return str(value)


def check_path_ids(request: Request) -> None:
    """ConsoleError (400) when an id in the path is outside 1..ID_MAX."""
    for name, value in request.path_params.items():
        if isinstance(value, int) and not 0 < value <= ID_MAX:
            raise ConsoleError(f"{name} in the address must be a whole number from 1 to {ID_MAX}")


register_url_convertor("id", IdConvertor())


def _query(request: Request) -> str:
    q = request.url.query
    return f"?{q}" if q else ""


def _local(target: str) -> str:
    """``target`` if it is a path on this site, else "/" (no open redirect)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def lang_of(request: Request) -> str:
    """The language chosen by cookie; Chinese by default."""
    lang = request.cookies.get(request.app.state.console.cookie_name(LANG_COOKIE), "zh")
    return lang if lang in LANGS else "zh"


Handler = Callable[[Ctx], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Page:
    """A row of the route table: path, handler, who may use it, and its menu entry."""

    path: str
    handler: Handler
    roles: frozenset[str]
    methods: tuple[str, ...] = ("GET",)
    nav: str = ""  # message key of its menu entry; "" when it has none


PublicPage = tuple[str, Handler, tuple[str, ...]]  # path, handler, methods: no login needed


def nav_for(pages: Sequence[Page], role: str) -> list[tuple[str, str]]:
    """Menu entries (path, message key) of the pages ``role`` may open."""
    return [(p.path, p.nav) for p in pages if p.nav and role in p.roles]


async def current_user(console: Console, request: Request) -> User | None:
    """The user whose session cookie came with ``request``, if it is live."""
    token = request.cookies.get(console.session_cookie, "")
    if not token:
        return None
    found = await console.run(auth.resume_session, console.store, token)
    return User(found[1], found[0]) if found else None


def guard(console: Console, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint for ``page``: session, role and CSRF checks, then the handler."""

    async def endpoint(request: Request) -> Response:
        user = await current_user(console, request)
        ctx = Ctx(console, request, user, lang_of(request))
        refused = await _refusal(ctx, page)
        if refused is not None:
            return refused
        try:
            check_path_ids(request)
            return await page.handler(ctx)
        except ConsoleError as e:
            return await refuse_input(ctx, e)

    return endpoint


def public(console: Console, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint open without login (the handler sees the user if there is one)."""

    async def endpoint(request: Request) -> Response:
        ctx = Ctx(console, request, await current_user(console, request), lang_of(request))
        try:
            return await handler(ctx)
        except ConsoleError as e:
            return await refuse_input(ctx, e)

    return endpoint


async def _refusal(ctx: Ctx, page: Page) -> Response | None:
    """Why ``ctx`` may not reach ``page`` (a response), or None when it may."""
    request, user = ctx.request, ctx.user
    if user is None:
        if request.method == "GET" and not request.url.path.startswith("/events/stream"):
            target = quote(_local(request.url.path + _query(request)), safe="/")
            return RedirectResponse(f"/login?next={target}", status_code=303)
        return PlainTextResponse("log in first", status_code=401)
    what = f"{request.method} {request.url.path}"[:300]
    if user.role not in page.roles:
        await ctx.audit("forbidden", what, ok=False, severity=events_pb2.SEVERITY_LOW)
        return ctx.error(403, ctx.t("forbidden"))
    if request.method != "GET":
        given = request.headers.get(CSRF_HEADER)
        if given is None:
            value = (await ctx.form()).get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not auth.same_token(user.session.csrf, given):
            await ctx.audit("csrf_refused", what, ok=False, severity=events_pb2.SEVERITY_MEDIUM)
            return ctx.error(403, ctx.t("csrf_refused"))
    if user.account.must_change and request.url.path not in ("/password", "/logout"):
        return RedirectResponse("/password", status_code=303)
    return None


async def refuse_input(ctx: Ctx, error: ConsoleError) -> HTMLResponse:
    """The 400 answer to bad input, recorded in the audit log like any refusal."""
    what = f"{ctx.request.method} {ctx.request.url.path}"[:300]
    await ctx.audit("bad_input", what, str(error)[:500], ok=False, severity=events_pb2.SEVERITY_LOW)
    return ctx.error(400, str(error))


def security_headers(*, tls: bool) -> list[tuple[bytes, bytes]]:
    """The headers every answer carries, pages and errors alike."""
    headers = [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), usb=()"),
    ]
    if tls:
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class SecurityHeaders:
    """ASGI middleware: security headers on every response, and a request body limit."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.headers = security_headers(tls=tls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap ``send`` to add headers; refuse oversized bodies before reading them."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                response = PlainTextResponse("request body too large", status_code=413)
                await response(scope, receive, self._sender(send, scope))
                return
        await self.app(scope, self._limited(receive), self._sender(send, scope))

    def _sender(self, send: Send, scope: Scope) -> Send:
        static = scope.get("path", "").startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(self.headers)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        return wrapped

    @staticmethod
    def _limited(receive: Receive) -> Receive:
        # A chunked body has no Content-Length: count what arrives instead.
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise ConsoleError("request body too large")
            return message

        return wrapped


def create_app(
    console: Console, pages: Sequence[Page], open_pages: Sequence[PublicPage]
) -> Starlette:
    """The Starlette application of ``console``: ``pages`` behind :func:`guard`,
    ``open_pages`` without login (the route table, :mod:`collector.console.routes`)."""
    console.pages = pages
    routes: list[Route | Mount] = [
        Route(p.path, guard(console, p), methods=list(p.methods)) for p in pages
    ]
    routes += [
        Route(path, public(console, handler), methods=list(methods))
        for path, handler, methods in open_pages
    ]
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
    headers = [*security_headers(tls=console.tls), (b"cache-control", b"no-store")]

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette answers an unhandled exception outside every middleware, so this
        # answer brings its own security headers. The exception is logged by uvicorn.
        response = PlainTextResponse("internal error: the collector's log says more", 500)
        response.raw_headers.extend(headers)
        return response

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders, tls=console.tls)],
        exception_handlers={Exception: server_error},
    )
    app.state.console = console
    return app
