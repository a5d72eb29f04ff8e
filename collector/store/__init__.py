"""Event stores: one interface (``Store``), SQLite and PostgreSQL backends."""

from __future__ import annotations

from collector.errors import ConfigError
from collector.store.base import CheckpointRow, EventQuery, EventRow, Store, TokenRow


def open_store(url: str) -> Store:
    """Open the store named by ``url``: ``sqlite:///PATH`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        from collector.store.sqlite import SQLiteStore  # noqa: PLC0415 - load drivers on use

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from collector.store.postgres import PostgresStore  # noqa: PLC0415 - load drivers on use

        return PostgresStore(url)
    raise ConfigError(
        f"unknown store {url!r}: use sqlite:///PATH (for example sqlite:///var/collector.db) "
        "or postgresql://USER@HOST:PORT/DB"
    )


__all__ = ["CheckpointRow", "EventQuery", "EventRow", "Store", "TokenRow", "open_store"]
