"""The SQL the SQLite and PostgreSQL stores share, written once.

Statements are written with ``?`` placeholders; a backend speaking ``%s`` (psycopg) has
them rewritten once per statement text. What differs between the two stays in the
backends: connections and schemas, the append path (SQLite multi-row INSERT,
PostgreSQL COPY), streaming reads (``chain``, ``scan``), and two terms of the console's
event query (``CONTAINS_TERM``, ``UNINDEXED``).

Both databases take ``INSERT ... ON CONFLICT``, ``RETURNING``, row values and integer
division alike; the statements below use nothing else that differs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

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
    PendingAction,
    PolicyVersionRow,
    ReportRow,
    SessionRow,
    TokenRow,
)

EVENT_COLUMNS = "host_id, seq, kind, severity, event_time, received_at, hash, body"
REPORT_COLUMNS = "id, kind, subject, fmt, lang, created_at, digest, size, path, scheduled"
ACCOUNT_COLUMNS = (
    "name, role, password_hash, must_change, failed, locked_until, created_at, created_by, "
    "granted_by"
)
_ACCOUNT_SELECT = (
    f"SELECT {ACCOUNT_COLUMNS}, name IN (SELECT name FROM console_disabled) FROM console_accounts"
)
# Terms of an UPDATE or SELECT on console_accounts: the account is enabled; another enabled
# account has its role (so taking this one out leaves the role to someone).
_ENABLED = "name NOT IN (SELECT name FROM console_disabled)"
_NOT_LAST = (
    "EXISTS (SELECT 1 FROM console_accounts o WHERE o.role = console_accounts.role "
    "AND o.name <> console_accounts.name "
    "AND o.name NOT IN (SELECT name FROM console_disabled))"
)
FINDING_COLUMNS = (
    "id, host_id, seq, title, severity, owner, due, status, note, created_at, created_by, "
    "updated_at, updated_by"
)


@functools.lru_cache(maxsize=512)
def format_style(sql: str) -> str:
    # No statement here holds a literal "?" or "%", so the rewrite is a plain replace.
    """``sql`` with ``?`` placeholders as ``%s`` (psycopg's style)."""
    return sql.replace("?", "%s")


class Transaction(Protocol):
    """Statements run inside one transaction (``SqlStore._transaction``)."""

    def execute(self, sql: str, args: Sequence[object] = (), /) -> Any:
        """Run one statement; its cursor."""

    def executemany(self, sql: str, rows: Sequence[Sequence[object]], /) -> Any:
        """Run one statement for each row of arguments."""


class SqlStore:
    """The shared part of a store; a backend supplies ``_db`` and ``_transaction``."""

    #: "?" (sqlite3) or "%s" (psycopg).
    PLACEHOLDER: ClassVar[str] = "?"
    #: A term true when the event's body holds the bytes of the parameter.
    CONTAINS_TERM: ClassVar[str]
    #: Put before event_time to keep its index out of a byte search (see console_events).
    UNINDEXED: ClassVar[str] = ""
    #: Ends a SELECT that locks its rows until the transaction ends ("" where a write
    #: transaction locks the whole database already, as SQLite's BEGIN IMMEDIATE does).
    FOR_UPDATE: ClassVar[str] = ""
    #: Begins a write transaction's turn to add a checkpoint, one writer at a time (""
    #: where BEGIN IMMEDIATE serializes every write transaction already).
    CHECKPOINT_TURN: ClassVar[str] = ""
    #: What the backend is called in errors.
    NAME: ClassVar[str]

    @property
    def _db(self) -> Any:
        """This thread's connection (sqlite3 or psycopg): ``execute`` returns a cursor."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Transaction]:
        """A transaction on this thread's connection, committed when the block ends."""
        raise NotImplementedError

    def _reports_ready(self) -> None:
        """Make sure the reports table exists (a backend may create it on first use)."""

    def _sql(self, sql: str) -> str:
        return sql if self.PLACEHOLDER == "?" else format_style(sql)

    def _run(self, sql: str, args: Sequence[object] = ()) -> Any:
        return self._db.execute(self._sql(sql), args)

    def _one(self, sql: str, args: Sequence[object] = ()) -> Any:
        return self._run(sql, args).fetchone()

    def _new_id(self, sql: str, args: Sequence[object], what: str) -> int:
        row = self._one(sql, args)
        if row is None:  # RETURNING always yields the new row
            raise StoreError(f"{self.NAME} returned no id for a new {what}")
        return int(row[0])

    # -- events --------------------------------------------------------------------
    def head(self, host_id: str) -> tuple[int, bytes] | None:
        """One host's last seq and hash."""
        row = self._one(
            "SELECT seq, hash FROM events WHERE host_id = ? ORDER BY seq DESC LIMIT 1",
            (host_id,),
        )
        return (int(row[0]), bytes(row[1])) if row else None

    def hashes(self, host_id: str, first_seq: int, last_seq: int) -> dict[int, bytes]:
        """Stored hashes for a seq range."""
        cur = self._run(
            "SELECT seq, hash FROM events WHERE host_id = ? AND seq BETWEEN ? AND ?",
            (host_id, first_seq, last_seq),
        )
        return {int(s): bytes(h) for s, h in cur}

    def received_times(self, host_id: str, first_seq: int, last_seq: int) -> list[tuple[int, int]]:
        """When each event of a seq range was received, in seq order."""
        cur = self._run(
            "SELECT seq, received_at FROM events WHERE host_id = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq",
            (host_id, first_seq, last_seq),
        )
        return [(int(s), int(r)) for s, r in cur]

    def query(self, q: EventQuery) -> list[EventRow]:
        """Events matching the filters, newest first."""
        where, args = event_filter(q)
        sql = f"SELECT {EVENT_COLUMNS} FROM events{where} ORDER BY event_time DESC, seq DESC"
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)}"
        return [event_row(r) for r in self._run(sql, args)]

    def received_keys(self, kind: str, since_us: int) -> list[tuple[str, int, int]]:
        """(host_id, seq, received_us) of the events of a rare ``kind`` received at or
        after ``since_us``, in the order received; their bodies are not read."""
        if kind in BULK_KINDS:
            raise ValueError(f"{kind} is not a rare kind: its events are not indexed by arrival")
        cur = self._run(
            f"SELECT host_id, seq, received_at FROM events WHERE kind = ? AND {RARE_KIND_TERM} "
            "AND received_at >= ? ORDER BY received_at, host_id, seq",
            (kind, since_us),
        )
        return [(str(h), int(s), int(r)) for h, s, r in cur]

    def count(self) -> int:
        """Number of stored events."""
        row = self._one("SELECT count(*) FROM events")
        return int(row[0]) if row else 0

    def event(self, host_id: str, seq: int) -> EventRow | None:
        """One event."""
        row = self._one(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE host_id = ? AND seq = ?", (host_id, seq)
        )
        return event_row(row) if row else None

    def events_after(self, host_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """A host's events after a seq, in seq order."""
        cur = self._run(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE host_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (host_id, after_seq, limit),
        )
        return [event_row(r) for r in cur]

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
            (self.CONTAINS_TERM, q.contains),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        # With a byte search, walking the time index visits rows in random order and,
        # when matches are rare, visits them all (~0.6 s per million events in SQLite);
        # a plain scan with a top-N sort is bounded (~0.25 s). UNINDEXED keeps the index
        # out of the ordering and of the page cursor (a time window the user gave still
        # uses it).
        unindexed = self.UNINDEXED if q.contains is not None else ""
        if q.fold_heartbeats:
            clauses.append(HEARTBEAT_FOLD_TERM)
            args.extend(HEARTBEAT_FOLD_ARGS)
        if q.kind is not None and q.kind not in BULK_KINDS:
            clauses.append(RARE_KIND_TERM)  # the partial index of rare kinds applies
        if q.min_severity is not None and q.min_severity >= VIOLATION_SEVERITY:
            clauses.append(VIOLATION_TERM)  # the partial index of violations applies
        if q.before is not None:
            clauses.append(f"({unindexed}event_time, host_id, seq) < (?, ?, ?)")
            args.extend(q.before)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events{where} "
            f"ORDER BY {unindexed}event_time DESC, host_id DESC, seq DESC LIMIT {int(q.limit)}"
        )
        return [event_row(r) for r in self._run(sql, args)]

    def severity_counts(
        self, since_us: int, bucket_us: int, min_severity: int
    ) -> list[tuple[int, int, int]]:
        """Counts per time bucket and severity."""
        violations = f" AND {VIOLATION_TERM}" if min_severity >= VIOLATION_SEVERITY else ""
        cur = self._run(
            "SELECT (event_time - ?) / ? AS b, severity, count(*) FROM events "
            f"WHERE severity >= ? AND event_time >= ?{violations} GROUP BY b, severity "
            "ORDER BY b",
            (since_us, bucket_us, min_severity, since_us),
        )
        return [(since_us + int(b) * bucket_us, int(s), int(n)) for b, s, n in cur]

    # -- hosts and enrolment ---------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        """Store an enrolment token."""
        self._run(
            "INSERT INTO tokens (token_hash, host_id, expires_at, used_at) VALUES (?, ?, ?, ?)",
            (token.token_hash, token.host_id, token.expires_us, token.used_us),
        )

    def token_host(self, token_hash: bytes, now_us: int) -> str | None:
        """The host of a token not yet used and not expired (the token stays unused)."""
        row = self._one(
            "SELECT host_id FROM tokens WHERE token_hash = ? AND used_at IS NULL "
            "AND expires_at > ?",
            (token_hash, now_us),
        )
        return str(row[0]) if row else None

    def use_token(self, token_hash: bytes, now_us: int) -> str | None:
        """Consume a token atomically."""
        # One statement: SQLite holds the write lock for it; under PostgreSQL's READ
        # COMMITTED a concurrent second UPDATE waits for the first, re-checks
        # used_at IS NULL and matches nothing. One winner per token either way.
        row = self._one(
            "UPDATE tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL "
            "AND expires_at > ? RETURNING host_id",
            (now_us, token_hash, now_us),
        )
        return str(row[0]) if row else None

    def add_host(self, host_id: str, cert_sha256: bytes, now_us: int) -> None:
        """Record an issued host certificate, retiring the host's earlier ones: after a
        re-enrolment only the newest certificate is taken on the agents' port."""
        with self._transaction() as tx:
            tx.execute(
                "DELETE FROM hosts WHERE host_id = ? AND cert_sha256 <> ?", (host_id, cert_sha256)
            )
            tx.execute(
                "INSERT INTO hosts (host_id, cert_sha256, enrolled_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (host_id, cert_sha256, now_us),
            )

    def host_certificates(self, host_id: str) -> list[bytes]:
        """Fingerprints of the host's certificates."""
        cur = self._run(
            "SELECT cert_sha256 FROM hosts WHERE host_id = ? ORDER BY enrolled_at", (host_id,)
        )
        return [bytes(r[0]) for r in cur]

    def hosts(self) -> list[str]:
        """Enrolled hosts and hosts with events."""
        cur = self._run(
            "SELECT host_id FROM hosts UNION SELECT DISTINCT host_id FROM events ORDER BY 1"
        )
        return [str(r[0]) for r in cur]

    def decommission(self, host_id: str, by: str, now_us: int) -> None:
        """Forget a host's certificates and mark it decommissioned."""
        with self._transaction() as tx:
            tx.execute("DELETE FROM hosts WHERE host_id = ?", (host_id,))
            tx.execute(
                "INSERT INTO decommissioned (host_id, decommissioned_at, decommissioned_by) "
                "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (host_id, now_us, by),
            )

    def recommission(self, host_id: str) -> None:
        """Clear the decommissioned mark."""
        self._run("DELETE FROM decommissioned WHERE host_id = ?", (host_id,))

    def decommissioned(self) -> dict[str, int]:
        """Decommissioned hosts and when."""
        cur = self._run("SELECT host_id, decommissioned_at FROM decommissioned")
        return {str(h): int(t) for h, t in cur}

    # -- checkpoints -------------------------------------------------------------------
    def add_checkpoint(self, created_us: int, body: bytes, signature: bytes) -> int:
        """Store a checkpoint."""
        return self._new_id(
            "INSERT INTO checkpoints (created_at, body, signature) VALUES (?, ?, ?) RETURNING id",
            (created_us, body, signature),
            "checkpoint",
        )

    def add_checkpoint_after(
        self, prev_id: int, created_us: int, body: bytes, signature: bytes
    ) -> int | None:
        """Store a checkpoint only if checkpoint ``prev_id`` (0: none) is the newest."""
        with self._transaction() as tx:
            if self.CHECKPOINT_TURN:
                tx.execute(self.CHECKPOINT_TURN)
            row = tx.execute("SELECT coalesce(max(id), 0) FROM checkpoints").fetchone()
            if row is None or int(row[0]) != prev_id:
                return None
            row = tx.execute(
                "INSERT INTO checkpoints (created_at, body, signature) VALUES (?, ?, ?) "
                "RETURNING id",
                (created_us, body, signature),
            ).fetchone()
            if row is None:  # RETURNING always yields the new row
                raise StoreError(f"{self.NAME} returned no id for a new checkpoint")
            return int(row[0])

    def last_checkpoint(self) -> CheckpointRow | None:
        """The newest checkpoint, or None."""
        row = self._one(
            "SELECT id, created_at, body, signature FROM checkpoints ORDER BY id DESC LIMIT 1"
        )
        if row is None:
            return None
        i, c, b, sig = row
        return CheckpointRow(int(i), int(c), bytes(b), bytes(sig))

    def checkpoints(self) -> list[CheckpointRow]:
        """All checkpoints, oldest first."""
        cur = self._run("SELECT id, created_at, body, signature FROM checkpoints ORDER BY id")
        return [CheckpointRow(int(i), int(c), bytes(b), bytes(s)) for i, c, b, s in cur]

    # -- reports -------------------------------------------------------------------------
    def add_report(self, row: ReportRow, document: bytes) -> int:
        """Store a report and its document."""
        self._reports_ready()
        return self._new_id(
            "INSERT INTO reports (kind, subject, fmt, lang, created_at, digest, size, path, "
            "scheduled, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                row.kind,
                row.subject,
                row.fmt,
                row.lang,
                row.created_us,
                row.digest,
                row.size,
                row.path,
                row.scheduled,
                document,
            ),
            "report",
        )

    def reports(self, kind: str | None = None) -> list[ReportRow]:
        """Stored reports, newest first."""
        self._reports_ready()
        where, args = (" WHERE kind = ?", [kind]) if kind is not None else ("", [])
        cur = self._run(
            f"SELECT {REPORT_COLUMNS} FROM reports{where} ORDER BY created_at DESC, id DESC",
            args,
        )
        return [report_row(r) for r in cur]

    def report_document(self, report_id: int) -> bytes | None:
        """One report's document."""
        self._reports_ready()
        row = self._one("SELECT document FROM reports WHERE id = ?", (report_id,))
        return bytes(row[0]) if row else None

    # -- console accounts and sessions ---------------------------------------------------
    def add_account(self, account: AccountRow) -> bool:
        """Store a new account; False when the name is taken."""
        a = account
        cur = self._run(
            f"INSERT INTO console_accounts ({ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                a.name,
                a.role,
                a.password_hash,
                a.must_change,
                a.failed,
                a.locked_until_us,
                a.created_us,
                a.created_by,
                a.granted_by,
            ),
        )
        return int(cur.rowcount) == 1

    def account(self, name: str) -> AccountRow | None:
        """One account, or None."""
        row = self._one(f"{_ACCOUNT_SELECT} WHERE name = ?", (name,))
        return account_row(row) if row else None

    def accounts(self) -> list[AccountRow]:
        """Every account, by name."""
        cur = self._run(f"{_ACCOUNT_SELECT} ORDER BY name")
        return [account_row(r) for r in cur]

    def grant_role(self, name: str, role: str, by: str, now_us: int, password_hash: str) -> bool:
        """Give a role to an enabled account without one; a new one-time password."""
        with self._transaction() as tx:
            cur = tx.execute(
                (
                    "UPDATE console_accounts SET role = ?, granted_by = ?, granted_at = ?, "
                    "password_hash = ?, must_change = ? "
                    f"WHERE name = ? AND role IS NULL AND {_ENABLED}"
                ),
                (role, by, now_us, password_hash, True, name),
            )
            if int(cur.rowcount) != 1:
                return False
            tx.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
        return True

    def revoke_role(self, name: str) -> bool:
        """Take a role, unless that leaves the role without an enabled account."""
        with self._transaction() as tx:
            self._lock_role_of(tx, name)
            cur = tx.execute(
                (
                    "UPDATE console_accounts SET role = NULL, granted_by = NULL, "
                    f"granted_at = NULL WHERE name = ? AND role IS NOT NULL AND {_NOT_LAST}"
                ),
                (name,),
            )
            if int(cur.rowcount) != 1:
                return False
            tx.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
        return True

    def disable_account(self, name: str, by: str, now_us: int) -> bool:
        """Disable an account, unless it is the last enabled one of its role."""
        with self._transaction() as tx:
            self._lock_role_of(tx, name)
            cur = tx.execute(
                (
                    "INSERT INTO console_disabled (name, disabled_at, disabled_by) "
                    "SELECT name, ?, ? FROM console_accounts "
                    f"WHERE name = ? AND {_ENABLED} AND (role IS NULL OR {_NOT_LAST})"
                ),
                (now_us, by, name),
            )
            if int(cur.rowcount) != 1:
                return False
            tx.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
        return True

    def _lock_role_of(self, tx: Transaction, name: str) -> None:
        # Two administrators taking out the last two holders of a role at once must not
        # both see the other one still enabled: the second waits for the first (under
        # PostgreSQL's READ COMMITTED its next statement then sees the first's change).
        tx.execute(
            "SELECT name FROM console_accounts WHERE role = "
            f"(SELECT role FROM console_accounts WHERE name = ?){self.FOR_UPDATE}",
            (name,),
        )

    def enable_account(self, name: str) -> bool:
        """Enable a disabled account."""
        cur = self._run("DELETE FROM console_disabled WHERE name = ?", (name,))
        return int(cur.rowcount) == 1

    def set_password(self, name: str, password_hash: str, *, must_change: bool) -> None:
        """Replace an account's password hash."""
        self._run(
            "UPDATE console_accounts SET password_hash = ?, must_change = ? WHERE name = ?",
            (password_hash, must_change, name),
        )

    def backoff(self, key: str) -> tuple[int, int] | None:
        """Failed attempts under ``key`` and when the last was."""
        row = self._one("SELECT failures, last_at FROM console_backoff WHERE key = ?", (key,))
        return (int(row[0]), int(row[1])) if row else None

    def backoff_failed(self, key: str, now_us: int, forget_us: int) -> int:
        """Count a failed attempt under ``key``; the count after."""
        # One statement for the count, so two concurrent failures cannot both read it.
        row = self._one(
            "INSERT INTO console_backoff (key, failures, last_at) VALUES (?, 1, ?) "
            "ON CONFLICT (key) DO UPDATE SET "
            "failures = CASE WHEN console_backoff.last_at < ? THEN 1 "
            "ELSE console_backoff.failures + 1 END, last_at = excluded.last_at "
            "RETURNING failures",
            (key, now_us, now_us - forget_us),
        )
        # Names nobody has (guessed ones) would otherwise stay forever.
        self._run("DELETE FROM console_backoff WHERE last_at < ?", (now_us - forget_us,))
        return int(row[0]) if row else 1

    def backoff_clear(self, key: str) -> None:
        """Forget ``key``'s failed attempts."""
        self._run("DELETE FROM console_backoff WHERE key = ?", (key,))

    def queue_action(self, action: PendingAction) -> None:
        """Queue a command-line action for the collector's chain."""
        a = action
        self._run(
            "INSERT INTO console_pending (at, actor, action, target, detail, ok) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (a.at_us, a.actor, a.action, a.target, a.detail, a.ok),
        )

    def pending_actions(self) -> list[PendingAction]:
        """Queued command-line actions, oldest first."""
        cur = self._run(
            "SELECT id, at, actor, action, target, detail, ok FROM console_pending ORDER BY id"
        )
        return [
            PendingAction(
                id=int(r[0]),
                at_us=int(r[1]),
                actor=str(r[2]),
                action=str(r[3]),
                target=str(r[4]),
                detail=str(r[5]),
                ok=bool(r[6]),
            )
            for r in cur
        ]

    def drop_action(self, action_id: int) -> None:
        """Remove a recorded action from the queue."""
        self._run("DELETE FROM console_pending WHERE id = ?", (action_id,))

    def add_session(self, session: SessionRow) -> None:
        """Store a session."""
        s = session
        self._run(
            "INSERT INTO console_sessions (token_hash, name, csrf, created_at, seen_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (s.token_hash, s.name, s.csrf, s.created_us, s.seen_us),
        )

    def session(self, token_hash: bytes) -> SessionRow | None:
        """A session by token hash."""
        row = self._one(
            "SELECT token_hash, name, csrf, created_at, seen_at FROM console_sessions "
            "WHERE token_hash = ?",
            (token_hash,),
        )
        if row is None:
            return None
        return SessionRow(bytes(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]))

    def touch_session(self, token_hash: bytes, now_us: int) -> None:
        """Note a session's use."""
        self._run(
            "UPDATE console_sessions SET seen_at = ? WHERE token_hash = ?", (now_us, token_hash)
        )

    def end_sessions(self, *, token_hash: bytes | None = None, name: str | None = None) -> None:
        """Remove one session or all of an account's."""
        if token_hash is not None:
            self._run("DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,))
        if name is not None:
            self._run("DELETE FROM console_sessions WHERE name = ?", (name,))

    # -- policy versions -------------------------------------------------------------------
    def add_policy_version(
        self, version: str, author: str, created_us: int, note: str, files: dict[str, bytes]
    ) -> int:
        """Store a published policy with its files, in one transaction."""
        with self._transaction() as tx:
            row = tx.execute(
                "INSERT INTO policy_versions (version, author, created_at, note) "
                "VALUES (?, ?, ?, ?) RETURNING number",
                (version, author, created_us, note),
            ).fetchone()
            if row is None:  # RETURNING always yields the new row
                raise StoreError(f"{self.NAME} returned no number for a new policy version")
            number = int(row[0])
            tx.executemany(
                "INSERT INTO policy_files (number, name, data) VALUES (?, ?, ?)",
                [(number, name, data) for name, data in sorted(files.items())],
            )
        return number

    def policy_versions(self, limit: int = 100) -> list[PolicyVersionRow]:
        """Published policies, newest first, without files."""
        cur = self._run(
            "SELECT number, version, author, created_at, note FROM policy_versions "
            "ORDER BY number DESC LIMIT ?",
            (limit,),
        )
        return [PolicyVersionRow(int(n), v, a, int(c), t, {}) for n, v, a, c, t in cur]

    def policy_version(self, number: int | None = None) -> PolicyVersionRow | None:
        """One published policy with its files (the newest by default)."""
        sql = "SELECT number, version, author, created_at, note FROM policy_versions "
        row = (
            self._one(sql + "ORDER BY number DESC LIMIT 1")
            if number is None
            else self._one(sql + "WHERE number = ?", (number,))
        )
        if row is None:
            return None
        cur = self._run("SELECT name, data FROM policy_files WHERE number = ?", (row[0],))
        files = {str(name): bytes(data) for name, data in cur}
        found, version, author, created, note = row
        return PolicyVersionRow(int(found), version, author, int(created), note, files)

    # -- findings and settings ---------------------------------------------------------------
    def add_finding(self, finding: FindingRow) -> int:
        """Store a finding."""
        f = finding
        return self._new_id(
            f"INSERT INTO findings ({FINDING_COLUMNS.removeprefix('id, ')}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
            "finding",
        )

    def update_finding(
        self, finding_id: int, *, owner: str, due: str, status: str, note: str, by: str, now_us: int
    ) -> bool:
        """Change a finding."""
        cur = self._run(
            "UPDATE findings SET owner = ?, due = ?, status = ?, note = ?, updated_by = ?, "
            "updated_at = ? WHERE id = ?",
            (owner, due, status, note, by, now_us, finding_id),
        )
        return int(cur.rowcount) == 1

    def findings(self, status: str | None = None) -> list[FindingRow]:
        """Findings, newest first."""
        sql = f"SELECT {FINDING_COLUMNS} FROM findings"
        args: tuple[object, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [FindingRow(*r) for r in self._run(sql + " ORDER BY id DESC", args)]

    def finding(self, finding_id: int) -> FindingRow | None:
        """One finding."""
        row = self._one(f"SELECT {FINDING_COLUMNS} FROM findings WHERE id = ?", (finding_id,))
        return FindingRow(*row) if row else None

    def settings(self) -> dict[str, str]:
        """Stored settings."""
        return {str(k): str(v) for k, v in self._run("SELECT key, value FROM console_settings")}

    def set_setting(self, key: str, value: str) -> None:
        """Store one setting."""
        self._run(
            "INSERT INTO console_settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


# -- rows -----------------------------------------------------------------------------
def event_row(row: Sequence[Any]) -> EventRow:
    """An events row (``EVENT_COLUMNS``) as an EventRow."""
    h, s, k, sev, t, r, x, b = row
    return EventRow(str(h), int(s), str(k), int(sev), int(t), int(r), bytes(x), bytes(b))


# Routine heartbeats (agent_status at INFO) folded out of listings; alarms stay.
HEARTBEAT_FOLD_TERM = "NOT (kind = ? AND severity <= ?)"
HEARTBEAT_FOLD_ARGS = ("agent_status", 1)  # events_pb2.SEVERITY_INFO


def event_filter(q: EventQuery) -> tuple[str, list[object]]:
    """The WHERE clause (with ``?``) and its arguments for an EventQuery."""
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
    if q.fold_heartbeats:
        clauses.append(HEARTBEAT_FOLD_TERM)
        args.extend(HEARTBEAT_FOLD_ARGS)
    if q.kind is not None and q.kind not in BULK_KINDS:
        # Implied by the kind, but named so that the partial index of rare kinds applies:
        # without it, a rare kind was looked for by walking every event's time.
        clauses.append(RARE_KIND_TERM)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def report_row(row: Sequence[Any]) -> ReportRow:
    """A reports row (``REPORT_COLUMNS``) as a ReportRow."""
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


def account_row(row: Sequence[Any]) -> AccountRow:
    """A console_accounts row (``ACCOUNT_COLUMNS``) as an AccountRow."""
    name, role, pw, must, failed, locked, created, by, granted, disabled = row
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
        disabled=bool(disabled),
    )
