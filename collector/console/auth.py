"""Console accounts: argon2 passwords, server-side sessions, CSRF tokens, lockout.

A session cookie carries a random token; the store keeps only its SHA-256, so a copy of
the database does not let anyone log in. Each session has its own CSRF token, which
every form and every state-changing request must send back.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from collector.console.errors import ConsoleError
from collector.ingest import now_us
from collector.store.base import ROLES, AccountRow, SessionRow, Store

PASSWORD_MIN_CHARS = 12
PASSWORD_MAX_CHARS = 256  # argon2 takes any length; a bound keeps hashing cheap to refuse
LOCKOUT_FAILURES = 5  # failed logins in a row that lock an account
LOCKOUT_SECONDS = 15 * 60  # how long a locked account stays locked
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
    reason: str = ""  # bad_credentials, locked, no_role
    locked_now: bool = False  # this failure locked the account


def authenticate(store: Store, name: str, password: str) -> Login:
    """Check a name and password, counting failures and honouring the lockout."""
    now = now_us()
    account = store.account(name) if NAME_RE.fullmatch(name) else None
    if account is None or len(password) > PASSWORD_MAX_CHARS:
        verify_password(_dummy_hash(), password[:PASSWORD_MAX_CHARS])
        return Login(account, ok=False, reason="bad_credentials")
    if account.locked_until_us > now:
        # Not even checked: a locked account must not become a password oracle.
        verify_password(_dummy_hash(), password)
        return Login(account, ok=False, reason="locked")
    if not verify_password(account.password_hash, password):
        after = store.login_failed(name, now, LOCKOUT_FAILURES, LOCKOUT_SECONDS * 1_000_000)
        locked = after is not None and after.locked_until_us > now
        return Login(after or account, ok=False, reason="bad_credentials", locked_now=locked)
    store.login_ok(name)
    if account.role is None:
        return Login(account, ok=False, reason="no_role")
    if _hasher.check_needs_rehash(account.password_hash):
        store.set_password(name, hash_password(password), must_change=account.must_change)
    return Login(account, ok=True)


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
    if account is None or account.role is None:
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
