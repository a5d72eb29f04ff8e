"""A small HTTP client for console tests: cookies, no redirects followed, forms, CSRF."""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Resp:
    """What came back."""

    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header_all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """One browser: its own cookie jar."""

    def __init__(self, base: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self.opener = urllib.request.build_opener(*handlers)
        self.csrf = ""

    def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        *,
        read: bool = True,
        timeout: float = 30,
    ) -> Resp:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        # The base is the test's own http(s)://127.0.0.1 URL.
        req = urllib.request.Request(self.base + path, data=body, method=method)  # noqa: S310
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=timeout) as r:
                return Resp(r.status, r.headers, r.read() if read else b"")
        except urllib.error.HTTPError as e:
            return Resp(e.code, e.headers, e.read())

    def get(self, path: str, **kw: Any) -> Resp:
        return self.request("GET", path, **kw)

    def post(
        self,
        path: str,
        data: dict[str, str] | list[tuple[str, str]] | None = None,
        *,
        csrf: bool = True,
        **kw: Any,
    ) -> Resp:
        """POST a form; the session's CSRF token is added unless ``csrf`` is False."""
        form: list[tuple[str, str]] = (
            list(data.items()) if isinstance(data, dict) else list(data or [])
        )
        if csrf:
            form.append(("csrf", self.csrf))
        return self.request("POST", path, form, **kw)

    def login(self, name: str, password: str) -> Resp:
        """Log in through the form; remember the session's CSRF token."""
        page = self.get("/login")
        token = CSRF_RE.search(page.text)
        assert token, page.text
        resp = self.request(
            "POST", "/login", {"csrf": token.group(1), "name": name, "password": password}
        )
        if resp.status == 303:
            self.refresh_csrf()
        return resp

    def refresh_csrf(self) -> None:
        """Read the CSRF token of the current session from a page."""
        page = self.get("/password")
        found = CSRF_RE.search(page.text)
        self.csrf = found.group(1) if found else ""
