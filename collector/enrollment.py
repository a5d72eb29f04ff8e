"""Enrolment tokens: single-use, short-lived, only their hash stored.

Made by ``baomi-collector token create`` and the console's hosts page, used up by the
``Enroll`` RPC (:mod:`collector.server`).
"""

from __future__ import annotations

import hashlib
import secrets

from collector import pki
from collector.ingest import now_us
from collector.store import Store, TokenRow

TOKEN_SECONDS = 24 * 3600  # default lifetime of an enrolment token


def create_token(store: Store, host_id: str, seconds: int = TOKEN_SECONDS) -> str:
    """A new single-use enrolment token for ``host_id``; only its hash is stored."""
    pki.check_host_id(host_id)
    # A fixed prefix: a token starting with "-" would read as an option on a command line.
    token = "bmt-" + secrets.token_urlsafe(24)
    store.add_token(
        TokenRow(
            token_hash=hashlib.sha256(token.encode()).digest(),
            host_id=host_id,
            expires_us=now_us() + seconds * 1_000_000,
            used_us=None,
        )
    )
    return token
