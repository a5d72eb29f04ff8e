"""SQLite store (WAL): the embedded default, one file, one machine.

Only what is SQLite's own is here (connections, schema, the append path, streaming
reads); the statements both backends speak are in :mod:`collector.store.sql`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from collector.errors import StoreError
from collector.store.base import EventQuery, EventRow
from collector.store.sql import EVENT_COLUMNS, SqlStore, Transaction, event_filter, event_row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    host_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    severity    INTEGER NOT NULL,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    PRIMARY KEY (host_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_time ON events (event_time);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE IF NOT EXISTS tokens (
    token_hash BLOB PRIMARY KEY,
    host_id    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE TABLE IF NOT EXISTS hosts (
    host_id     TEXT    NOT NULL,
    cert_sha256 BLOB    NOT NULL,
    enrolled_at INTEGER NOT NULL,
    PRIMARY KEY (host_id, cert_sha256)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    signature  BLOB    NOT NULL
);
"""

_EVENT_FIELDS = 8
#: Most rows per INSERT statement in ``append`` (a power of two; fewer if SQLite allows
#: fewer variables per statement).
INSERT_ROWS = 2048


def _floor_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


@functools.lru_cache(maxsize=16)
def _insert_sql(rows: int) -> str:
    values = ",".join(["(" + ",".join("?" * _EVENT_FIELDS) + ")"] * rows)
    return (
        f"INSERT INTO events ({EVENT_COLUMNS}) VALUES {values} "
        "ON CONFLICT (host_id, seq) DO NOTHING"
    )


def _enable_wal(db: sqlite3.Connection, attempts: int = 50) -> None:
    # Switching a new database to WAL takes an exclusive lock, and SQLite does not wait on
    # the busy handler for it: several collectors opening one new file at once retry.
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
        else:
            return


# -- reports ---------------------------------------------------------------------
# Generated reports and their documents (collector.reports); rows are added, never changed.
_REPORTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    fmt        TEXT    NOT NULL,
    lang       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    digest     TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    path       TEXT    NOT NULL,
    scheduled  INTEGER NOT NULL,
    document   BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_subject ON reports (kind, subject);
"""
SCAN_FETCH_ROWS = 2000  # rows per fetch when streaming a scan (~2000 x body size)


class SQLiteStore(SqlStore):
    """A store in one SQLite file, one connection per thread."""

    PLACEHOLDER = "?"
    CONTAINS_TERM = "instr(body, ?) > 0"
    # "+event_time" is an expression, not the column: SQLite then leaves its index out.
    UNINDEXED = "+"
    NAME = "SQLite"

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db.executescript(_SCHEMA)
            self._db.executescript(_REPORTS_SCHEMA)  # -- reports --
            self._db.executescript(_CONSOLE_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open SQLite store {self._path}: {e}") from e

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=10
            )
            _enable_wal(db)
            # FULL: an acknowledged batch survives a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")  # ms
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    def leases(self) -> SingleCollector:
        """Claim the file for this collector: SQLite serves one collector at a time."""
        return SingleCollector(self._path)

    def append(self, rows: Sequence[EventRow]) -> int:
        """Insert rows in one transaction; rows already stored are skipped."""
        db = self._db
        # Many rows per statement, not executemany: the sqlite3 module releases the GIL
        # around every statement step, and with one row per step the writer thread waits
        # for the GIL once per row (up to the 5 ms switch interval) whenever the event
        # loop is busy, so a group commit of 20,000 rows could take seconds. Statements
        # of 2**k rows keep SQLite's statement cache to a dozen shapes.
        limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _EVENT_FIELDS
        most = _floor_pow2(min(INSERT_ROWS, limit))
        before = db.total_changes
        with self._transaction():
            i = 0
            while i < len(rows):
                n = min(most, _floor_pow2(len(rows) - i))
                db.execute(
                    _insert_sql(n),
                    [
                        value
                        for r in rows[i : i + n]
                        for value in (
                            r.host_id,
                            r.seq,
                            r.kind,
                            r.severity,
                            r.event_time_us,
                            r.received_us,
                            r.hash,
                            r.body,
                        )
                    ],
                )
                i += n
        return db.total_changes - before

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        db = self._db
        # IMMEDIATE: take the write lock now, so the transaction cannot fail on upgrade.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every host's last seq and hash."""
        cur = self._db.execute(
            "SELECT e.host_id, e.seq, e.hash FROM events e JOIN "
            "(SELECT host_id, MAX(seq) AS seq FROM events GROUP BY host_id) m "
            "ON e.host_id = m.host_id AND e.seq = m.seq"
        )
        return {h: (s, bytes(x)) for h, s, x in cur}

    def chain(self, host_id: str) -> Iterator[EventRow]:
        """A host's events in seq order, read lazily."""
        cur = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE host_id = ? ORDER BY seq", (host_id,)
        )
        for row in cur:
            yield event_row(row)

    # -- reports ---------------------------------------------------------------------
    def scan(self, q: EventQuery) -> Iterator[EventRow]:
        """Matching events oldest first, read lazily in chunks."""
        where, args = event_filter(q)
        sql = f"SELECT {EVENT_COLUMNS} FROM events{where} ORDER BY event_time, host_id, seq"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        cur = self._db.execute(sql, args)
        try:
            while chunk := cur.fetchmany(SCAN_FETCH_ROWS):
                # sqlite3 already returns str, int and bytes: no per-column conversion.
                for row in chunk:
                    yield EventRow(*row)
        finally:
            cur.close()


# -- console ----------------------------------------------------------------------------
# Indexes for the console's event pages, and its own tables. Each page must answer within
# 300 ms over a million events (bench/console.py): rare kinds for the device, meeting
# and audit pages and the kind filter, violations for the overview chart and the
# severity filter. Both are partial, so ingest maintains them only for the few events
# they hold (measured on SQLiteStore.append: two full indexes cost ~25% of its rate,
# these partial ones ~10-15% with a realistic mix of kinds and severities).
_CONSOLE_SCHEMA = """
CREATE INDEX IF NOT EXISTS events_rare_kind_time ON events (kind, event_time)
    WHERE kind NOT IN ('file_access', 'agent_status', 'file_change');
CREATE INDEX IF NOT EXISTS events_rare_kind_received ON events (kind, received_at)
    WHERE kind NOT IN ('file_access', 'agent_status', 'file_change');
CREATE INDEX IF NOT EXISTS events_violation_time ON events (severity, event_time)
    WHERE severity >= 3;
CREATE TABLE IF NOT EXISTS console_accounts (
    name          TEXT PRIMARY KEY,
    role          TEXT,
    password_hash TEXT    NOT NULL,
    must_change   INTEGER NOT NULL,
    failed        INTEGER NOT NULL,
    locked_until  INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT    NOT NULL,
    granted_by    TEXT,
    granted_at    INTEGER
);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash BLOB PRIMARY KEY,
    name       TEXT    NOT NULL,
    csrf       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS console_disabled (
    name        TEXT PRIMARY KEY,
    disabled_at INTEGER NOT NULL,
    disabled_by TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS console_backoff (
    key      TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS console_pending (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL,
    ok     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_versions (
    number     INTEGER PRIMARY KEY,
    version    TEXT    NOT NULL,
    author     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    note       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_files (
    number INTEGER NOT NULL REFERENCES policy_versions (number),
    name   TEXT    NOT NULL,
    data   BLOB    NOT NULL,
    PRIMARY KEY (number, name)
);
CREATE TABLE IF NOT EXISTS findings (
    id         INTEGER PRIMARY KEY,
    host_id    TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    title      TEXT    NOT NULL,
    severity   INTEGER NOT NULL,
    owner      TEXT    NOT NULL,
    due        TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    note       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS console_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decommissioned (
    host_id           TEXT PRIMARY KEY,
    decommissioned_at INTEGER NOT NULL,
    decommissioned_by TEXT    NOT NULL
);
"""


class SingleCollector:
    """The leases of the only collector an SQLite store may have: all of them.

    SQLite has no session that dies with a collector on another machine, and its file
    is local, so several collectors on one file are refused rather than coordinated:
    an exclusive ``flock`` on ``<file>.collector`` (released by the kernel when the
    process dies) is held while the collector serves. The command line's reads and
    ``user`` commands do not take it. Run several collectors on PostgreSQL.
    """

    def __init__(self, path: Path) -> None:
        self._lock_path = path.with_name(path.name + ".collector")
        self._fd: int | None = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise StoreError(
                f"another collector serves the SQLite store {path} (it holds "
                f"{self._lock_path}); SQLite serves one collector at a time: stop that one, "
                "or store in PostgreSQL (--store postgresql://...) to run several"
            ) from None

    def take(self, host_id: str) -> int:
        """Always this collector's (one generation: the process)."""
        return 0

    def give_back(self, host_id: str, generation: int) -> None:
        """Nothing to release: the streams of one process are serialized by ingest."""

    def alive(self) -> int:
        """The process is its own lease."""
        return 0

    def close(self) -> None:
        """Let another collector serve the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
