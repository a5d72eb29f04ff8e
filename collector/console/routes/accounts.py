"""Account pages: the list, creating an account (sysadmin), and granting, revoking,
resetting, disabling, enabling and unlocking (secadmin), each audited.

The operations themselves are in :mod:`collector.console.accounts`, shared with
``baomi-collector user``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector.console import auth
from collector.console.accounts import disable, enable, grant, reset, revoke, unlock, wait_of
from collector.console.app import SEC, SYS, Ctx
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.store.base import ROLES, AccountRow

T = TypeVar("T")


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


async def account_create(c: Ctx) -> Response:
    """A new account without a role. Its password is never shown: the creator must not
    know any credential of it (granting a role sets the first usable one)."""
    name = (await c.field("name", 32)).strip()
    account, _ = await c.run(
        lambda: auth.create_account(c.store, name, role=None, by=c.account.name, must_change=True)
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
        lambda: grant(c.store, name, role, c.account.name),
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
        c, "account_disable", name, "sessions ended", lambda: disable(c.store, name, c.account.name)
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
