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
from collector.store.base import (
    BULK_KINDS,
    RARE_KIND_TERM,
    VIOLATION_SEVERITY,
    VIOLATION_TERM,
    AccountRow,
    CheckpointRow,
    ConsoleQuery,
    EventQuery,
    EventRow,
    FindingRow,
    PolicyVersionRow,
    ReportRow,
    SessionRow,
    TokenRow,
)

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
_REPORT_COLUMNS = "id, kind, subject, fmt, lang, created_at, digest, size, path, scheduled"
SCAN_FETCH_ROWS = 2000  # rows per fetch when streaming a scan (~2000 x body size)


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

    # -- reports ---------------------------------------------------------------------
    def scan(self, q: EventQuery) -> Iterator[EventRow]:
        """Matching events oldest first, read lazily in chunks."""
        where, args = _where(q)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY event_time, host_id, seq"
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

    def add_report(self, row: ReportRow, document: bytes) -> int:
        """Store a report and its document."""
        cur = self._db.execute(
            "INSERT INTO reports (kind, subject, fmt, lang, created_at, digest, size, path, "
            "scheduled, document) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                row.kind,
                row.subject,
                row.fmt,
                row.lang,
                row.created_us,
                row.digest,
                row.size,
                row.path,
                int(row.scheduled),
                document,
            ),
        )
        return int(cur.fetchone()[0])

    def reports(self, kind: str | None = None) -> list[ReportRow]:
        """Stored reports, newest first."""
        where, args = (" WHERE kind = ?", [kind]) if kind is not None else ("", [])
        cur = self._db.execute(
            f"SELECT {_REPORT_COLUMNS} FROM reports{where} ORDER BY created_at DESC, id DESC",
            args,
        )
        return [_report_row(r) for r in cur]

    def report_document(self, report_id: int) -> bytes | None:
        """One report's document."""
        row = self._db.execute("SELECT document FROM reports WHERE id = ?", (report_id,)).fetchone()
        return bytes(row[0]) if row else None

    # -- console -------------------------------------------------------------------
    def add_account(self, account: AccountRow) -> bool:
        """Store a new account; False when the name is taken."""
        cur = self._db.execute(
            f"INSERT INTO console_accounts ({_ACCOUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT DO NOTHING",
            _account_values(account),
        )
        return cur.rowcount == 1

    def account(self, name: str) -> AccountRow | None:
        """One account, or None."""
        row = self._db.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM console_accounts WHERE name = ?", (name,)
        ).fetchone()
        return _account_row(row) if row else None

    def accounts(self) -> list[AccountRow]:
        """Every account, by name."""
        cur = self._db.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM console_accounts ORDER BY name")
        return [_account_row(r) for r in cur]

    def grant_role(self, name: str, role: str, by: str, now_us: int) -> bool:
        """Give a role to an account without one."""
        cur = self._db.execute(
            "UPDATE console_accounts SET role = ?, granted_by = ?, granted_at = ? "
            "WHERE name = ? AND role IS NULL",
            (role, by, now_us, name),
        )
        return cur.rowcount == 1

    def set_password(self, name: str, password_hash: str, *, must_change: bool) -> None:
        """Replace an account's password hash."""
        self._db.execute(
            "UPDATE console_accounts SET password_hash = ?, must_change = ? WHERE name = ?",
            (password_hash, int(must_change), name),
        )

    def login_failed(self, name: str, now_us: int, limit: int, lock_us: int) -> AccountRow | None:
        """Count a failed login; lock at the limit."""
        # One statement, so two concurrent failures cannot both read the old count.
        row = self._db.execute(
            "UPDATE console_accounts SET "
            "locked_until = CASE WHEN failed + 1 >= ? THEN ? ELSE locked_until END, "
            "failed = CASE WHEN failed + 1 >= ? THEN 0 ELSE failed + 1 END "
            f"WHERE name = ? RETURNING {_ACCOUNT_COLUMNS}",
            (limit, now_us + lock_us, limit, name),
        ).fetchone()
        return _account_row(row) if row else None

    def login_ok(self, name: str) -> None:
        """Forget failed logins."""
        self._db.execute("UPDATE console_accounts SET failed = 0 WHERE name = ?", (name,))

    def add_session(self, session: SessionRow) -> None:
        """Store a session."""
        self._db.execute(
            "INSERT INTO console_sessions VALUES (?,?,?,?,?)",
            (session.token_hash, session.name, session.csrf, session.created_us, session.seen_us),
        )

    def session(self, token_hash: bytes) -> SessionRow | None:
        """A session by token hash."""
        row = self._db.execute(
            "SELECT token_hash, name, csrf, created_at, seen_at FROM console_sessions "
            "WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return SessionRow(bytes(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def touch_session(self, token_hash: bytes, now_us: int) -> None:
        """Note a session's use."""
        self._db.execute(
            "UPDATE console_sessions SET seen_at = ? WHERE token_hash = ?", (now_us, token_hash)
        )

    def end_sessions(self, *, token_hash: bytes | None = None, name: str | None = None) -> None:
        """Remove one session or all of an account's."""
        if token_hash is not None:
            self._db.execute("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))
        if name is not None:
            self._db.execute("DELETE FROM console_sessions WHERE name = ?", (name,))

    def add_policy_version(
        self, version: str, author: str, created_us: int, note: str, files: dict[str, bytes]
    ) -> int:
        """Store a published policy with its files, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            number = int(
                db.execute(
                    "INSERT INTO policy_versions (version, author, created_at, note) "
                    "VALUES (?,?,?,?) RETURNING number",
                    (version, author, created_us, note),
                ).fetchone()[0]
            )
            db.executemany(
                "INSERT INTO policy_files VALUES (?,?,?)",
                [(number, name, data) for name, data in sorted(files.items())],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return number

    def policy_versions(self, limit: int = 100) -> list[PolicyVersionRow]:
        """Published policies, newest first, without files."""
        cur = self._db.execute(
            "SELECT number, version, author, created_at, note FROM policy_versions "
            "ORDER BY number DESC LIMIT ?",
            (limit,),
        )
        return [PolicyVersionRow(n, v, a, c, t, {}) for n, v, a, c, t in cur]

    def policy_version(self, number: int | None = None) -> PolicyVersionRow | None:
        """One published policy with its files (the newest by default)."""
        sql = "SELECT number, version, author, created_at, note FROM policy_versions "
        row = (
            self._db.execute(sql + "ORDER BY number DESC LIMIT 1").fetchone()
            if number is None
            else self._db.execute(sql + "WHERE number = ?", (number,)).fetchone()
        )
        if row is None:
            return None
        files = {
            str(name): bytes(data)
            for name, data in self._db.execute(
                "SELECT name, data FROM policy_files WHERE number = ?", (row[0],)
            )
        }
        number, version, author, created, note = row
        return PolicyVersionRow(number, version, author, created, note, files)

    def add_finding(self, finding: FindingRow) -> int:
        """Store a finding."""
        f = finding
        row = self._db.execute(
            f"INSERT INTO findings ({_FINDING_COLUMNS.removeprefix('id, ')}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                f.host_id,
                f.seq,
                f.title,
                f.severity,
                f.owner,
                f.due,
                f.status,
                f.note,
                f.created_us,
                f.created_by,
                f.updated_us,
                f.updated_by,
            ),
        ).fetchone()
        return int(row[0])

    def update_finding(
        self, finding_id: int, *, owner: str, due: str, status: str, note: str, by: str, now_us: int
    ) -> bool:
        """Change a finding."""
        cur = self._db.execute(
            "UPDATE findings SET owner = ?, due = ?, status = ?, note = ?, updated_by = ?, "
            "updated_at = ? WHERE id = ?",
            (owner, due, status, note, by, now_us, finding_id),
        )
        return cur.rowcount == 1

    def findings(self, status: str | None = None) -> list[FindingRow]:
        """Findings, newest first."""
        sql = f"SELECT {_FINDING_COLUMNS} FROM findings"
        args: tuple[object, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [FindingRow(*r) for r in self._db.execute(sql + " ORDER BY id DESC", args)]

    def finding(self, finding_id: int) -> FindingRow | None:
        """One finding."""
        row = self._db.execute(
            f"SELECT {_FINDING_COLUMNS} FROM findings WHERE id = ?", (finding_id,)
        ).fetchone()
        return FindingRow(*row) if row else None

    def settings(self) -> dict[str, str]:
        """Stored settings."""
        return {str(k): str(v) for k, v in self._db.execute("SELECT * FROM console_settings")}

    def set_setting(self, key: str, value: str) -> None:
        """Store one setting."""
        self._db.execute(
            "INSERT INTO console_settings VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def decommission(self, host_id: str, by: str, now_us: int) -> None:
        """Forget a host's certificates and mark it decommissioned."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM hosts WHERE host_id = ?", (host_id,))
            db.execute(
                "INSERT INTO decommissioned VALUES (?,?,?) ON CONFLICT DO NOTHING",
                (host_id, now_us, by),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def recommission(self, host_id: str) -> None:
        """Clear the decommissioned mark."""
        self._db.execute("DELETE FROM decommissioned WHERE host_id = ?", (host_id,))

    def decommissioned(self) -> dict[str, int]:
        """Decommissioned hosts and when."""
        cur = self._db.execute("SELECT host_id, decommissioned_at FROM decommissioned")
        return {str(h): int(t) for h, t in cur}

    def console_events(self, q: ConsoleQuery) -> list[EventRow]:
        """Events for the console's events page, newest first."""
        clauses: list[str] = []
        args: list[object] = []
        for clause, value in (
            ("host_id = ?", q.host_id),
            ("kind = ?", q.kind),
            ("severity >= ?", q.min_severity),
            ("event_time >= ?", q.since_us),
            ("event_time < ?", q.until_us),
            ("instr(body, ?) > 0", q.contains),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        # With a byte search, walking the time index visits rows in random order and,
        # when matches are rare, visits them all (~0.6 s per million events); a plain
        # scan with a top-N sort is bounded (~0.25 s). "+" keeps the index out of the
        # ordering and of the page cursor (a time window the user gave still uses it).
        plus = "+" if q.contains is not None else ""
        if q.kind is not None and q.kind not in BULK_KINDS:
            clauses.append(RARE_KIND_TERM)  # the partial index of rare kinds applies
        if q.min_severity is not None and q.min_severity >= VIOLATION_SEVERITY:
            clauses.append(VIOLATION_TERM)  # the partial index of violations applies
        if q.before is not None:
            clauses.append(f"({plus}event_time, host_id, seq) < (?, ?, ?)")
            args.extend(q.before)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        # (see above), walking the time index visits rows in random order and,
        # when matches are rare, visits them all (~0.6 s per million events); a plain
        # scan with a top-N sort is bounded (~0.25 s). "+" keeps the index out of ORDER BY.
        order = "+event_time" if q.contains is not None else "event_time"
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events{where} "
            f"ORDER BY {order} DESC, host_id DESC, seq DESC LIMIT {int(q.limit)}"
        )
        return [_event_row(r) for r in self._db.execute(sql, args)]

    def event(self, host_id: str, seq: int) -> EventRow | None:
        """One event."""
        row = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE host_id = ? AND seq = ?", (host_id, seq)
        ).fetchone()
        return _event_row(row) if row else None

    def events_after(self, host_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """A host's events after a seq, in seq order."""
        cur = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE host_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (host_id, after_seq, limit),
        )
        return [_event_row(r) for r in cur]

    def severity_counts(
        self, since_us: int, bucket_us: int, min_severity: int
    ) -> list[tuple[int, int, int]]:
        """Counts per time bucket and severity."""
        violations = f" AND {VIOLATION_TERM}" if min_severity >= VIOLATION_SEVERITY else ""
        cur = self._db.execute(
            "SELECT (event_time - ?) / ? AS b, severity, COUNT(*) FROM events "
            f"WHERE severity >= ? AND event_time >= ?{violations} GROUP BY b, severity "
            "ORDER BY b",
            (since_us, bucket_us, min_severity, since_us),
        )
        return [(since_us + int(b) * bucket_us, int(s), int(n)) for b, s, n in cur]


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


def _report_row(row: tuple[Any, ...]) -> ReportRow:  # -- reports --
    i, kind, subject, fmt, lang, created, digest, size, path, scheduled = row
    return ReportRow(
        id=int(i),
        kind=str(kind),
        subject=str(subject),
        fmt=str(fmt),
        lang=str(lang),
        created_us=int(created),
        digest=str(digest),
        size=int(size),
        path=str(path),
        scheduled=bool(scheduled),
    )


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

_ACCOUNT_COLUMNS = (
    "name, role, password_hash, must_change, failed, locked_until, created_at, created_by, "
    "granted_by"
)
_FINDING_COLUMNS = (
    "id, host_id, seq, title, severity, owner, due, status, note, created_at, created_by, "
    "updated_at, updated_by"
)


def _account_values(a: AccountRow) -> tuple[object, ...]:
    return (
        a.name,
        a.role,
        a.password_hash,
        int(a.must_change),
        a.failed,
        a.locked_until_us,
        a.created_us,
        a.created_by,
        a.granted_by,
    )


def _account_row(row: tuple[Any, ...]) -> AccountRow:
    name, role, pw, must, failed, locked, created, by, granted = row
    return AccountRow(
        name=str(name),
        role=role,
        password_hash=str(pw),
        must_change=bool(must),
        failed=int(failed),
        locked_until_us=int(locked),
        created_us=int(created),
        created_by=str(by),
        granted_by=granted,
    )
