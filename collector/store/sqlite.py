"""SQLite store (WAL): the embedded default, one file, one machine."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from collector.errors import StoreError
from collector.store.base import CheckpointRow, EventQuery, EventRow, TokenRow

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

_EVENT_COLUMNS = "host_id, seq, kind, severity, event_time, received_at, hash, body"
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
        f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {values} "
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


class SQLiteStore:
    """A store in one SQLite file, one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db.executescript(_SCHEMA)
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
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.total_changes - before

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every host's last seq and hash."""
        cur = self._db.execute(
            "SELECT e.host_id, e.seq, e.hash FROM events e JOIN "
            "(SELECT host_id, MAX(seq) AS seq FROM events GROUP BY host_id) m "
            "ON e.host_id = m.host_id AND e.seq = m.seq"
        )
        return {h: (s, bytes(x)) for h, s, x in cur}

    def head(self, host_id: str) -> tuple[int, bytes] | None:
        """One host's last seq and hash."""
        row = self._db.execute(
            "SELECT seq, hash FROM events WHERE host_id = ? ORDER BY seq DESC LIMIT 1",
            (host_id,),
        ).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def hashes(self, host_id: str, first_seq: int, last_seq: int) -> dict[int, bytes]:
        """Stored hashes for a seq range."""
        cur = self._db.execute(
            "SELECT seq, hash FROM events WHERE host_id = ? AND seq BETWEEN ? AND ?",
            (host_id, first_seq, last_seq),
        )
        return {s: bytes(h) for s, h in cur}

    def chain(self, host_id: str) -> Iterator[EventRow]:
        """A host's events in seq order, read lazily."""
        cur = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE host_id = ? ORDER BY seq", (host_id,)
        )
        for row in cur:
            yield _event_row(row)

    def query(self, q: EventQuery) -> list[EventRow]:
        """Events matching the filters, newest first."""
        where, args = _where(q)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY event_time DESC, seq DESC"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        return [_event_row(r) for r in self._db.execute(sql, args)]

    def count(self) -> int:
        """Number of stored events."""
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def add_token(self, token: TokenRow) -> None:
        """Store an enrolment token."""
        self._db.execute(
            "INSERT INTO tokens VALUES (?,?,?,?)",
            (token.token_hash, token.host_id, token.expires_us, token.used_us),
        )

    def use_token(self, token_hash: bytes, now_us: int) -> str | None:
        """Consume a token atomically."""
        row = self._db.execute(
            "UPDATE tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
            "AND expires_at > ? RETURNING host_id",
            (now_us, token_hash, now_us),
        ).fetchone()
        return str(row[0]) if row else None

    def add_host(self, host_id: str, cert_sha256: bytes, now_us: int) -> None:
        """Record an issued host certificate."""
        self._db.execute(
            "INSERT OR IGNORE INTO hosts VALUES (?,?,?)", (host_id, cert_sha256, now_us)
        )

    def host_certificates(self, host_id: str) -> list[bytes]:
        """Fingerprints of the host's certificates."""
        cur = self._db.execute(
            "SELECT cert_sha256 FROM hosts WHERE host_id = ? ORDER BY enrolled_at", (host_id,)
        )
        return [bytes(r[0]) for r in cur]

    def hosts(self) -> list[str]:
        """Enrolled hosts and hosts with events."""
        cur = self._db.execute(
            "SELECT host_id FROM hosts UNION SELECT DISTINCT host_id FROM events ORDER BY 1"
        )
        return [str(r[0]) for r in cur]

    def add_checkpoint(self, created_us: int, body: bytes, signature: bytes) -> int:
        """Store a checkpoint."""
        cur = self._db.execute(
            "INSERT INTO checkpoints (created_at, body, signature) VALUES (?,?,?) RETURNING id",
            (created_us, body, signature),
        )
        return int(cur.fetchone()[0])

    def checkpoints(self) -> list[CheckpointRow]:
        """All checkpoints, oldest first."""
        cur = self._db.execute(
            "SELECT id, created_at, body, signature FROM checkpoints ORDER BY id"
        )
        return [CheckpointRow(i, c, bytes(b), bytes(s)) for i, c, b, s in cur]


def _event_row(row: tuple[Any, ...]) -> EventRow:
    h, s, k, sev, t, r, x, b = row
    return EventRow(str(h), int(s), str(k), int(sev), int(t), int(r), bytes(x), bytes(b))


def _where(q: EventQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for column, op, value in (
        ("host_id", "=", q.host_id),
        ("kind", "=", q.kind),
        ("event_time", ">=", q.since_us),
        ("event_time", "<", q.until_us),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
