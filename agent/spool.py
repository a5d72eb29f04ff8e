"""The durable spool: every event is written here, with its place in the chain, first.

One SQLite file in WAL mode. ``events`` holds what the collector has not acknowledged
yet, and the last ``RETAINED`` events it has; ``meta`` holds the chain head (which
outlives the events it names), the last acknowledged seq and its hash, whether the
agent stopped cleanly, and when it was last known to be alive.

The agent is a witness of its own chain: an acknowledgement must name an event this
host made, with that event's hash, and never fall below what was acknowledged before
(``acknowledge`` raises ``CollectorMismatch``); the events kept after acknowledgement
are sent again to a collector that lost them.

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
CACHE_KIB = 256  # SQLite page cache of the open spool
RETAINED = 10_000  # acknowledged events kept, to send again to a collector that lost them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


def _quick_check(path: Path) -> None:
    # On a connection of its own: the check reads every page, and the pages it read
    # would otherwise stay in the long-lived connection's cache (up to 2 MB) for good.
    db = sqlite3.connect(path, isolation_level=None)
    try:
        result = db.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        db.close()
    if result != "ok":
        raise sqlite3.DatabaseError(result)


class Spool:
    """A host's unacknowledged events and chain head, in one SQLite file."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Open an existing spool; refuse one that is missing or corrupt."""
        if not path.exists():
            raise SpoolError(
                f"no spool at {path}: enrol this host first ('baomi-agent --state-dir "
                f"{path.parent} enroll --collector HOST:PORT --token TOKEN --ca CA.pem'), "
                "which creates it"
            )
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            _quick_check(path)
            # No statement cache: a cached insert keeps the body last bound to it (a
            # label inventory's ~300 KB) until the next append; preparing costs a few
            # microseconds per batch.
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, cached_statements=0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # SQLite's default cache (2 MB) would fill with the pages of every large event
            # written or sent and stay resident; appends and in-order reads need little.
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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
        if not self._has_meta("acked_seq"):  # a spool made before acks were kept
            first = self._db.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            acked = (int(first) - 1) if first is not None else int(self._meta("head_seq"))
            self._set_meta(acked_seq=str(acked).encode(), acked_hash=b"")  # hash unknown
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
                    ("acked_seq", str(head_seq).encode()),
                    ("acked_hash", head_hash or chain.GENESIS),
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

    def _has_meta(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone() is not None

    def _set_meta(self, **values: bytes) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    @property
    def head(self) -> tuple[int, bytes]:
        """The last assigned seq and its hash (by any writer of this file)."""
        with self._lock:
            return int(self._meta("head_seq")), self._meta("head_hash")

    def append(
        self, events: list[events_pb2.Event], *, journal: tuple[bytes, int] | None = None
    ) -> list[events_pb2.Event]:
        """Chain and durably store ``events`` (host, seq, prev_hash and time filled in).

        ``journal``: the event journal's (epoch, position) these events reach, stored in
        the same transaction (``journal_mark``), so none is recovered from it twice.
        """
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
                if journal is not None:
                    self._set_meta(journal_epoch=journal[0], journal_upto=str(journal[1]).encode())
                self._db.execute("COMMIT")
            except (sqlite3.Error, KeyError, ValueError) as e:
                self._db.execute("ROLLBACK")
                raise SpoolError(f"cannot write the spool {self.path}: {e}") from e
            self._appended_since_size_check += len(rows)
            if self._appended_since_size_check >= 100 or self.full:
                self._check_size()
        return events

    def journal_mark(self) -> tuple[bytes, int] | None:
        """The event journal's (epoch, position) the spool holds everything before;
        None before the first commit that named one."""
        with self._lock:
            if not self._has_meta("journal_epoch"):
                return None
            return self._meta("journal_epoch"), int(self._meta("journal_upto"))

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

    def release_memory(self) -> None:
        """Free SQLite's page cache of the spool (``PRAGMA shrink_memory``). For when
        the stream has caught up: the cache holds pages of the last events written,
        sent and acknowledged (a label inventory's ~300 KB), and refills on use."""
        with self._lock:
            self._db.execute("PRAGMA shrink_memory")

    def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored events with seq greater than ``seq``, in order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            )
            return [(int(s), bytes(b)) for s, b in cur]

    @property
    def acked(self) -> tuple[int, bytes]:
        """The last seq the collector acknowledged and its hash (b"" if not known)."""
        with self._lock:
            return int(self._meta("acked_seq")), self._meta("acked_hash")

    def acknowledge(self, up_to_seq: int, head_hash: bytes) -> int:
        """Take the collector's word that it stores this host's chain up to ``up_to_seq``
        ending in ``head_hash``; returns how many events became acknowledged.

        Raises CollectorMismatch when the word cannot be true: the event at that seq
        is not the one this host made (a forged or foreign head), it lies beyond what
        this host made, or below what the collector acknowledged before (it lost
        events: ``lost``; ``rebase`` then continues from its head). Nothing is
        forgotten then.
        """
        with self._lock:
            acked_seq = int(self._meta("acked_seq"))
            self._check_word(up_to_seq, head_hash)
            if up_to_seq < acked_seq:
                raise CollectorMismatch(
                    f"the collector's chain ends at seq {up_to_seq}, below seq {acked_seq} it "
                    "acknowledged before: it lost events",
                    lost=True,
                )
            if up_to_seq == acked_seq:
                return 0
            self._acked_to(up_to_seq, head_hash)
            return up_to_seq - acked_seq

    def rebase(self, up_to_seq: int, head_hash: bytes) -> None:
        """Continue from a collector that lost events (after ``acknowledge`` said so and
        it was recorded): its head becomes the acknowledged one, if this host made it,
        and what is kept after it is sent again."""
        with self._lock:
            self._check_word(up_to_seq, head_hash)
            self._acked_to(up_to_seq, head_hash)

    def _check_word(self, up_to_seq: int, head_hash: bytes) -> None:
        """Raise unless ``head_hash`` can be this host's event at ``up_to_seq``."""
        head_seq = int(self._meta("head_seq"))
        if up_to_seq > head_seq:
            raise CollectorMismatch(
                f"the collector holds seq {up_to_seq} of this host, which made only {head_seq}"
            )
        mine = self._hash_at(up_to_seq)
        if mine is not None and mine != head_hash:
            raise CollectorMismatch(
                f"the collector holds another event at seq {up_to_seq} than this host made"
            )

    def _hash_at(self, seq: int) -> bytes | None:
        """This host's hash at ``seq`` when it can still tell (the event is kept, or is
        the one last acknowledged, or the chain's start)."""
        body = self._db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        if body is not None:
            return chain.bytes_hash(bytes(body[0]))
        if seq == int(self._meta("acked_seq")) and (acked := self._meta("acked_hash")):
            return acked
        return chain.GENESIS if seq == 0 else None

    def _acked_to(self, seq: int, head_hash: bytes) -> None:
        self._set_meta(acked_seq=str(seq).encode(), acked_hash=self._hash_at(seq) or head_hash)
        self._db.execute("DELETE FROM events WHERE seq <= ?", (seq - RETAINED,))
        if self.full:
            self._check_size()

    @property
    def exported(self) -> int:
        """The last seq an export (``baomi-agent export``) carried; the acknowledged seq
        when none did."""
        with self._lock:
            if self._has_meta("exported_seq"):
                return int(self._meta("exported_seq"))
            return int(self._meta("acked_seq"))

    def set_exported(self, seq: int) -> None:
        """Note that an export carried every event up to ``seq``."""
        with self._lock:
            self._set_meta(exported_seq=str(seq).encode())

    def read_range(self, after: int, up_to: int) -> list[tuple[int, bytes]]:
        """The stored events with ``after`` < seq <= ``up_to``, in order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, up_to),
            )
            return [(int(s), bytes(b)) for s, b in cur]

    def forget_through(self, seq: int) -> int:
        """Take an import at the collector (an offline host's receipt) as the
        acknowledgement of every event up to ``seq``; how many became acknowledged.
        Only what an export carried may be forgotten (SpoolError otherwise)."""
        with self._lock:
            exported = int(self._meta("exported_seq")) if self._has_meta("exported_seq") else 0
            acked = int(self._meta("acked_seq"))
            if seq > exported:
                raise SpoolError(
                    f"seq {seq} was never exported (exports reach seq {exported}): export "
                    "first, import at the collector, then forget what it stored"
                )
            if seq <= acked:
                return 0
            mine = self._hash_at(seq)
            if mine is None:  # kept since it is above the acknowledged seq
                raise SpoolError(f"the spool no longer holds seq {seq}")
            self._acked_to(seq, mine)
            return seq - acked

    def pending(self) -> int:
        """How many events wait for an acknowledgement."""
        with self._lock:
            acked = int(self._meta("acked_seq"))
            cur = self._db.execute("SELECT COUNT(*) FROM events WHERE seq > ?", (acked,))
            return int(cur.fetchone()[0])

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


class CollectorMismatch(Exception):  # noqa: N818 - what the collector said, not our failure
    """The collector's acknowledgement cannot be true of this host's chain."""

    def __init__(self, detail: str, *, lost: bool = False) -> None:
        super().__init__(detail)
        self.lost = lost  # it is below an earlier acknowledgement (events were lost)
