"""Slowing password guessing: a growing wait per account name and per client address.

A lockout that anyone can trigger by typing wrong passwords locks out the real user too,
and a lockout that only an administrator lifts is a denial of service. Instead, after a
few free failures every further attempt under the same name (or from the same address)
must wait, twice as long after each failure, up to ``MAX_WAIT_S``; waiting is the only
thing needed to try again. An attempt made while waiting is answered "try again in N s"
without checking the password, so it neither guesses nor extends the wait.

Names are counted whether an account has them or not, so the answers for an unknown, a
disabled and a real name are the same. The counts live in the store, so that
``baomi-collector user unlock`` can clear them while the collector runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from collector.store.base import Store

NAME_FREE = 3  # failures under one name before waiting starts
ADDRESS_FREE = 10  # from one address (an office behind one NAT shares it)
FIRST_WAIT_S = 1  # the first wait, doubled after every further failure
MAX_WAIT_S = 300  # the longest wait
FORGET_S = 3600  # a key whose last failure is older than this starts again at 0


@dataclass(frozen=True, slots=True)
class Key:
    """What failures are counted under, and how many are free."""

    key: str
    free: int


def keys(name: str, client: str) -> list[Key]:
    """The keys of an attempt under ``name`` from ``client``."""
    return [name_key(name), Key(f"addr:{client}", ADDRESS_FREE)]


def name_key(name: str) -> Key:
    """The key of an account name (what an unlock clears)."""
    return Key(f"name:{name[:64]}", NAME_FREE)


def wait_after(failures: int, free: int) -> int:
    """Seconds to wait after ``failures`` in a row, when ``free`` of them cost nothing."""
    if failures < free:
        return 0
    return min(FIRST_WAIT_S << min(failures - free, 20), MAX_WAIT_S)


def wait_s(store: Store, attempt: list[Key], now_us: int) -> int:
    """Whole seconds before ``attempt`` may be made (0: now)."""
    longest = 0.0
    for k in attempt:
        found = store.backoff(k.key)
        if found is None:
            continue
        failures, last_us = found
        if now_us - last_us > FORGET_S * 1_000_000:
            continue
        until_us = last_us + wait_after(failures, k.free) * 1_000_000
        longest = max(longest, (until_us - now_us) / 1_000_000)
    return math.ceil(longest) if longest > 0 else 0


def failed(store: Store, attempt: list[Key], now_us: int) -> int:
    """Count a failed attempt; the seconds to wait before the next one."""
    longest = 0
    for k in attempt:
        failures = store.backoff_failed(k.key, now_us, FORGET_S * 1_000_000)
        longest = max(longest, wait_after(failures, k.free))
    return longest


def succeeded(store: Store, name: str) -> None:
    """Forget a name's failures after the right password. Its address keeps counting:
    an attacker with an account of their own could otherwise reset it between guesses."""
    store.backoff_clear(name_key(name).key)


def unlock(store: Store, name: str) -> bool:
    """Clear a name's wait; True when it had failures counted."""
    had = store.backoff(name_key(name).key) is not None
    store.backoff_clear(name_key(name).key)
    return had
