"""The durable spool: every event is written here, with its place in the chain, first.

One SQLite file in WAL mode. ``events`` holds what the collector has not acknowledged
yet; ``meta`` holds the chain head (which outlives the events it names), whether the
agent stopped cleanly, and when it was last known to be alive.

Writers may be sensor threads; one lock serialises them, so seq and prev_hash are
assigned in exactly the order events are committed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from baomi import chain
from baomi.v1 import events_pb2

from agent.errors import SpoolError

DEFAULT_MAX_BYTES = 1024 * 1024 * 1024  # 1 GiB; beyond it the agent is loud, never lossy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def _quick_check(db: sqlite3.Connection) -> None:
    result = db.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise sqlite3.DatabaseError(result)


class Spool:
    """A host's unacknowledged events and chain head, in one SQLite file."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Open an existing spool; refuse one that is missing or corrupt."""
        if not path.exists():
            raise SpoolError(
                f"no spool at {path}: enrol this host first ('baomi-agent enroll ...'), "
                "which creates it"
            )
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            _quick_check(self._db)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self.host_id = self._meta("host_id").decode()
            int(self._meta("head_seq")), self._meta("head_hash")  # present and well formed
        except (sqlite3.DatabaseError, KeyError, ValueError) as e:
            raise SpoolError(
                f"the spool {path} is corrupt ({e}). The agent will not start over it, since "
                "events not yet sent would be lost. Keep the file for investigation "
                f"(mv {path} {path}.corrupt; 'sqlite3 {path}.corrupt .recover' salvages "
                "what it can), then re-enrol with a new token: the new spool continues the "
                "chain where the collector has it."
            ) from e
        self._appended_since_size_check = 100  # check on the first append
        self.full = False
        self.on_full: Callable[[int], None] | None = None

    @classmethod
    def create(cls, path: Path, host_id: str, head_seq: int, head_hash: bytes) -> Spool:
        """Create a spool whose chain continues at the collector's head for ``host_id``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("host_id", host_id.encode()),
                    ("head_seq", str(head_seq).encode()),
                    ("head_hash", head_hash or chain.GENESIS),
                    ("running", b"0"),
                    ("last_alive", b"0"),
                ],
            )
        finally:
            db.close()
        path.chmod(0o600)
        return cls(path)

    def _meta(self, key: str) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"meta {key} missing")
        return bytes(row[0])

    def _set_meta(self, **values: bytes) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    @property
    def head(self) -> tuple[int, bytes]:
        """The last assigned seq and its hash (by any writer of this file)."""
        with self._lock:
            return int(self._meta("head_seq")), self._meta("head_hash")

    def append(self, events: list[events_pb2.Event]) -> list[events_pb2.Event]:
        """Chain and durably store ``events`` (host, seq, prev_hash and time filled in)."""
        with self._lock:
            rows = []
            now = time.time_ns()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise SpoolError(f"cannot write the spool {self.path}: {e}") from e
            try:
                # Read the head under the write lock: another process (a second agent
                # instance, an import tool) may have appended since we last looked, and
                # a cached head would hand out its seqs again and fork the chain.
                seq, head = int(self._meta("head_seq")), self._meta("head_hash")
                for ev in events:
                    seq += 1
                    ev.host_id = self.host_id
                    ev.seq = seq
                    ev.prev_hash = head
                    if not ev.HasField("time"):
                        ev.time.FromNanoseconds(now)
                    body = chain.canonical_bytes(ev)
                    head = chain.bytes_hash(body)
                    rows.append((seq, body))
                self._db.executemany("INSERT INTO events VALUES (?, ?)", rows)
                self._set_meta(head_seq=str(seq).encode(), head_hash=head)
                self._db.execute("COMMIT")
            except (sqlite3.Error, KeyError, ValueError) as e:
                self._db.execute("ROLLBACK")
                raise SpoolError(f"cannot write the spool {self.path}: {e}") from e
            self._appended_since_size_check += len(rows)
            if self._appended_since_size_check >= 100 or self.full:
                self._check_size()
        return events

    def _check_size(self) -> None:
        self._appended_since_size_check = 0
        size = self.size_bytes_locked()
        was_full, self.full = self.full, size > self.max_bytes
        if self.full and not was_full and self.on_full is not None:
            self.on_full(size)

    def size_bytes_locked(self) -> int:
        """Bytes used by the database and its WAL (caller holds the lock)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        wal = Path(f"{self.path}-wal")
        return int((pages - free) * page) + (wal.stat().st_size if wal.exists() else 0)

    def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored events with seq greater than ``seq``, in order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            )
            return [(int(s), bytes(b)) for s, b in cur]

    def acknowledge(self, up_to_seq: int) -> int:
        """Forget events the collector has stored; returns how many were removed."""
        with self._lock:
            cur = self._db.execute("DELETE FROM events WHERE seq <= ?", (up_to_seq,))
            if self.full:
                self._check_size()
            return cur.rowcount

    def pending(self) -> int:
        """How many events wait for an acknowledgement."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes the spool uses on disk."""
        with self._lock:
            return self.size_bytes_locked()

    def mark_running(self) -> tuple[bool, int]:
        """Note that the agent runs. Returns (previous stop was unclean, last alive µs)."""
        with self._lock:
            unclean = self._meta("running") == b"1"
            last_alive = int(self._meta("last_alive") or b"0")
            self._set_meta(running=b"1", last_alive=str(time.time_ns() // 1000).encode())
            return unclean, last_alive

    def touch_alive(self) -> None:
        """Record that the agent was alive and enforcing now."""
        with self._lock:
            self._set_meta(last_alive=str(time.time_ns() // 1000).encode())

    def mark_stopped(self) -> None:
        """Note a clean stop."""
        with self._lock:
            self._set_meta(running=b"0", last_alive=str(time.time_ns() // 1000).encode())

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
