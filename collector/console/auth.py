"""Console accounts: argon2 passwords, server-side sessions, CSRF tokens, guessing limits.

A session cookie carries a random token; the store keeps only its SHA-256, so a copy of
the database does not let anyone log in. Each session has its own CSRF token, which
every form and every state-changing request must send back. The login form, which has
no session yet, carries a token the server signs (``login_token``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from collector.console import ratelimit
from collector.console.errors import ConsoleError
from collector.ingest import now_us
from collector.store.base import ROLES, AccountRow, SessionRow, Store

PASSWORD_MIN_CHARS = 12
PASSWORD_MAX_CHARS = 256  # argon2 takes any length; a bound keeps hashing cheap to refuse
LOGIN_TOKEN_SECONDS = 3600  # a login form must be sent within this long of being shown
SESSION_IDLE_SECONDS = 30 * 60  # a session unused this long has ended
SESSION_MAX_SECONDS = 12 * 3600  # and none lasts longer than this
TOUCH_SECONDS = 60  # write a session's last use at most this often
NAME_RE = re.compile(r"[a-z][a-z0-9._-]{0,31}")

# argon2id with the library's defaults (RFC 9106's second recommended profile).
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the account is unknown, so that both take as long."""
    return _hasher.hash(secrets.token_urlsafe(16))


def check_name(name: str) -> str:
    """``name`` if it is a valid account name, else ConsoleError."""
    if not NAME_RE.fullmatch(name):
        raise ConsoleError(
            f"account name {name[:40]!r} is not valid: use 1-32 lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter"
        )
    return name


def check_role(role: str) -> str:
    """``role`` if it is one of the three, else ConsoleError."""
    if role not in ROLES:
        raise ConsoleError(f"role {role[:40]!r} is not one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    """``password`` if it is long enough, else ConsoleError."""
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise ConsoleError(
            f"a password needs {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters"
        )
    return password


def generate_password() -> str:
    """A random password of 16 URL-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def create_account(
    store: Store,
    name: str,
    *,
    role: str | None,
    by: str,
    password: str | None = None,
    must_change: bool = False,
) -> tuple[AccountRow, str]:
    """Store a new account and return it with its password (generated when not given)."""
    check_name(name)
    if role is not None:
        check_role(role)
    password = check_password(password) if password is not None else generate_password()
    now = now_us()
    account = AccountRow(
        name=name,
        role=role,
        password_hash=hash_password(password),
        must_change=must_change,
        failed=0,
        locked_until_us=0,
        created_us=now,
        created_by=by,
        granted_by=by if role is not None else None,
    )
    if not store.add_account(account):
        raise ConsoleError(f"an account named {name!r} exists already")
    return account, password


@dataclass(frozen=True, slots=True)
class Login:
    """The outcome of a login attempt."""

    account: AccountRow | None  # the account when the name is known
    ok: bool
    reason: str = ""  # bad_credentials, wait, no_role
    wait_s: int = 0  # seconds before the next attempt under this name or from this client
    detail: str = ""  # for the audit log only: why, as the answer must not say


def authenticate(store: Store, name: str, password: str, client: str) -> Login:
    """Check a name and password from ``client``, honouring and counting guessing limits.

    Unknown, disabled and wrongly guessed names get the same answers in the same
    sequence: a failure is counted under the name whether an account has it or not.
    """
    now = now_us()
    attempt = ratelimit.keys(name, client)
    account = store.account(name) if NAME_RE.fullmatch(name) else None
    wait = ratelimit.wait_s(store, attempt, now)
    if wait:
        # Not even checked: a name that is waiting must not become a password oracle.
        return Login(account, ok=False, reason="wait", wait_s=wait, detail=f"waiting {wait} s")
    if account is None or len(password) > PASSWORD_MAX_CHARS:
        verify_password(_dummy_hash(), password[:PASSWORD_MAX_CHARS])
        detail = "unknown name"
    elif not verify_password(account.password_hash, password):
        detail = "wrong password"
    elif account.disabled:
        detail = "disabled"
    else:
        ratelimit.succeeded(store, name)
        if account.role is None:
            return Login(account, ok=False, reason="no_role", detail="no role")
        if _hasher.check_needs_rehash(account.password_hash):
            store.set_password(name, hash_password(password), must_change=account.must_change)
        return Login(account, ok=True)
    wait = ratelimit.failed(store, attempt, now)
    if wait:
        detail += f"; waiting {wait} s"
    return Login(account, ok=False, reason="bad_credentials", wait_s=wait, detail=detail)


def login_token(secret: bytes, now_s: int | None = None) -> str:
    """A fresh login form token: expiry and nonce, signed with the console's secret.

    Issued on every GET /login and never taken from a cookie, so a token planted by
    another site is not adopted; the signature and expiry make one the server did not
    issue (or issued long ago) worthless.
    """
    expires = (int(time.time()) if now_s is None else now_s) + LOGIN_TOKEN_SECONDS
    body = f"{expires}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_sign(secret, body)}"


def login_token_ok(secret: bytes, cookie: str, form: str, now_s: int | None = None) -> bool:
    """True when the form and the cookie carry the same token, signed here and unexpired."""
    if not same_token(cookie, form) or len(cookie) > 200:
        return False
    body, _, mac = cookie.rpartition(".")
    expires = body.split(".", 1)[0]
    if not expires.isdigit() or not hmac.compare_digest(_sign(secret, body), mac):
        return False
    return int(expires) >= (int(time.time()) if now_s is None else now_s)


def _sign(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def cross_site(headers: Mapping[str, str]) -> bool:
    """True when a browser says the request came from another site or origin.

    Sec-Fetch-Site is trusted first. Without it, Origin decides, except ``null``: with
    Referrer-Policy no-referrer Chromium sends ``Origin: null`` on some same-origin form
    posts, and the signed token still protects those.
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return False
    return urlsplit(origin).netloc != headers.get("host", "")


def token_hash(token: str) -> bytes:
    """What the store keeps of a session token."""
    return hashlib.sha256(token.encode()).digest()


def start_session(store: Store, name: str) -> tuple[str, SessionRow]:
    """A new session for ``name``: the cookie token and the stored row."""
    token = secrets.token_urlsafe(32)
    now = now_us()
    row = SessionRow(
        token_hash=token_hash(token),
        name=name,
        csrf=secrets.token_urlsafe(32),
        created_us=now,
        seen_us=now,
    )
    store.add_session(row)
    return token, row


def resume_session(store: Store, token: str) -> tuple[SessionRow, AccountRow] | None:
    """The live session and account a cookie token names, or None (ended sessions go)."""
    if not token or len(token) > 100:
        return None
    digest = token_hash(token)
    session = store.session(digest)
    if session is None:
        return None
    now = now_us()
    if (
        now - session.seen_us > SESSION_IDLE_SECONDS * 1_000_000
        or now - session.created_us > SESSION_MAX_SECONDS * 1_000_000
    ):
        store.end_sessions(token_hash=digest)
        return None
    account = store.account(session.name)
    if account is None or account.role is None or account.disabled:
        store.end_sessions(token_hash=digest)
        return None
    if now - session.seen_us > TOUCH_SECONDS * 1_000_000:
        store.touch_session(digest, now)
    return session, account


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of CSRF tokens; an empty or missing one never matches."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
