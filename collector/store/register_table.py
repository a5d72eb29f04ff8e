"""The classification register's table (定密台账): one row per entry, for queries.

The register's truth is the ``register_step`` events in the collectors' chains
(:mod:`collector.register`); this table is kept from them after every step and written
whole from the record when a collector starts, so it is never more than a view of the
record that SQL (and whoever reads the database) can query: ``SELECT * FROM
register_entries WHERE status = 'in_force' AND level = 3``. Both stores share the SQL;
the table is made on first use (under PostgreSQL's schema lock, as reports are).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

from collector.store.base import Store
from collector.store.sql import SqlStore

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS register_entries (
    register_id  TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    home         TEXT NOT NULL,
    title        TEXT NOT NULL,
    level        INTEGER NOT NULL,
    until        TEXT NOT NULL,
    scope        TEXT NOT NULL,
    basis        TEXT NOT NULL,
    responsible  TEXT NOT NULL,
    requester    TEXT NOT NULL,
    approver     TEXT NOT NULL,
    status       TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    approved_at  BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS register_entries_host ON register_entries (host, status)",
)
_SCHEMA_LOCK_KEY = 0x62616F6D69  # collector.store.postgres's: one schema change at a time


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterRow:
    """One entry as the table holds it (times in microseconds since the epoch)."""

    register_id: str
    host: str
    home: str
    title: str
    level: int
    until: str  # ISO date, "" when none
    scope: str  # comma list
    basis: str
    responsible: str
    requester: str
    approver: str
    status: str
    content_hash: str
    created_at: int
    approved_at: int
    updated_at: int


_COLUMNS = tuple(f.name for f in fields(RegisterRow))
_UPSERT = (
    f"INSERT INTO register_entries ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (register_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    # Another collector may have written a newer state meanwhile: keep the newer.
    + " WHERE register_entries.updated_at <= excluded.updated_at"
)
_ready: weakref.WeakSet[SqlStore] = weakref.WeakSet()


def _ensure(store: SqlStore) -> None:
    if store in _ready:
        return
    with store._transaction() as tx:  # a table of the store's package: its own transaction
        if store.PLACEHOLDER == "%s":  # PostgreSQL: collectors may start together
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
        for statement in _SCHEMA:
            tx.execute(statement)
    _ready.add(store)


def put(store: Store, rows: Sequence[RegisterRow]) -> bool:
    """Write ``rows`` (insert or replace by register id); False when ``store`` keeps no
    SQL tables (a test double)."""
    if not isinstance(store, SqlStore):
        return False
    _ensure(store)
    with store._transaction() as tx:
        tx.executemany(_UPSERT, [astuple(r) for r in rows])
    return True


def entries(
    store: Store, *, status: str | None = None, host: str | None = None
) -> list[RegisterRow]:
    """Rows of the table (of one status and host, when given), newest first."""
    if not isinstance(store, SqlStore):
        return []
    _ensure(store)
    where, args = [], []
    for column, value in (("status", status), ("host", host)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT {', '.join(_COLUMNS)} FROM register_entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, register_id"
    cur = store._run(sql, args)
    return [RegisterRow(**dict(zip(_COLUMNS, r, strict=True))) for r in cur]
