"""Account lifecycle: granting and revoking a role, resetting, disabling, enabling,
unlocking.

Separation of duties (三员分立) that survives a malicious administrator:
- a system administrator creates an account, without a role and without learning any
  password of it (the one it is created with is never shown);
- a security administrator grants its one role, which sets a fresh one-time password
  shown only to them, to hand to the person, and ends every earlier credential and
  session of the account; the person must change it at first login;
- the security administrator also revokes roles, resets passwords (a new one-time one),
  disables, enables and unlocks (clears the guessing wait);
- the last enabled account of a role can be neither disabled nor revoked.

These operations are shared by the console's account pages
(:mod:`collector.console.routes.accounts`) and ``baomi-collector user``.
"""

from __future__ import annotations

from collector.console import auth, ratelimit
from collector.console.errors import ConsoleError
from collector.ingest import now_us
from collector.store.base import AccountRow, Store


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
