"""The host's side of the classification register (定密台账, issue 15).

* ``label request``: a request to classify, change or declassify a file, spooled as a
  ``label_request`` event (a host offline keeps it in its spool until it is sent).
* Label orders: an approver's decision, signed by the collector (Ed25519, the key
  received at enrolment, as for policy bundles). :class:`LabelOrders` verifies each
  order -- signature, this host, the file's content -- applies it with
  :func:`baomi.labels.set_label` (sealed with the host key, the register id as the
  label's ``label_id``) and reports a ``label_order_result`` event either way.
* Inventory: the labelled files under the protected trees (register id, level, until,
  scope, home, content hash), reported at start and whenever it changes, looked at
  every heartbeat; the collector compares it with the register (drift).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import logging
import os
import secrets
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path

import grpc
from baomi import labels
from baomi.policy.errors import LabelError
from baomi.v1 import collector_pb2, events_pb2

from agent.errors import AgentError
from agent.heap import return_freed_heap
from agent.identity import Identity
from agent.signing import SigningKey
from agent.spool import Spool

_logger = logging.getLogger(__name__)

DONE_FILE = "label_orders.done"  # in the state directory: order ids applied or failed
#: A full walk of the trees at least this often even when no change was reported.
RESCAN_SECONDS = 600.0
MAX_INVENTORY_FILES = 10_000  # labelled files one inventory lists; more: truncated
ACTIONS = ("classify", "change", "declassify")


class OrderError(AgentError):
    """A label order this host refuses; the message says why."""


def order_signed_bytes(order: collector_pb2.LabelOrder) -> bytes:
    """What the collector signed: the order with an empty signature."""
    unsigned = collector_pb2.LabelOrder()
    unsigned.CopyFrom(order)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex of a file's content."""
    return content_digest(path).hex()


def content_digest(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 of a file's content."""
    with open(path, "rb") as f:  # noqa: PTH123 - a str path stays a str (see _files)
        return hashlib.file_digest(f, "sha256").digest()


#: What a file version is for the inventory's hash cache: dev, inode, mtime, ctime, size.
#: Any change of a file's content changes its ctime, which only the kernel sets.
_VERSION = struct.Struct("=QQqqq")
HASHES_FILE = "content-hashes.db"  # in the state directory: the inventory's hash cache
HASHES_CACHE_KIB = 64  # SQLite's page cache for it: read and written in one pass


class ContentHashes:
    """SHA-256 of the labelled files' contents by file version, kept in a database
    (``<state>/content-hashes.db``), not in memory: an idle agent keeps nothing per
    file for it (it was ~180 bytes a file), and a restart does not read every labelled
    file again. A cache only: a damaged one is started afresh."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            _logger.warning("content hash cache %s is damaged (%s): starting it afresh", path, e)
            self.discard()
            self._db = self._open()
        self._pass = 0

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        with contextlib.suppress(OSError):
            self._path.chmod(0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a cache: a lost write is hashed again
        db.execute(f"PRAGMA cache_size=-{HASHES_CACHE_KIB}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (version BLOB PRIMARY KEY,"
            " sha256 BLOB NOT NULL, pass INTEGER NOT NULL) WITHOUT ROWID"
        )
        # A damaged file is found here, not in the middle of a pass.
        if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
            raise sqlite3.DatabaseError("quick_check found damage")

    def discard(self) -> None:
        """Remove the cache's files (the connection, if any, must be closed)."""
        for stale in (self._path, Path(f"{self._path}-wal"), Path(f"{self._path}-shm")):
            stale.unlink(missing_ok=True)

    def begin(self) -> None:
        """Start a pass over the trees: the versions it does not see are forgotten."""
        self._db.execute("BEGIN")
        row = self._db.execute("SELECT max(pass) FROM hashes").fetchone()
        self._pass = (row[0] or 0) + 1

    def digest(self, version: bytes, path: str) -> bytes:
        """SHA-256 of ``path``, whose version is ``version``: read only when not known."""
        row = self._db.execute("SELECT sha256 FROM hashes WHERE version = ?", (version,)).fetchone()
        digest = bytes(row[0]) if row is not None else content_digest(path)
        self._db.execute(
            "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?)", (version, digest, self._pass)
        )
        return digest

    def end(self, *, complete: bool) -> None:
        """End the pass; forget what it did not see when it walked the whole trees."""
        if complete:
            self._db.execute("DELETE FROM hashes WHERE pass < ?", (self._pass,))
        self._db.execute("COMMIT")

    def abandon(self) -> None:
        """A pass that failed: nothing of it is kept."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM hashes").fetchone()[0])

    def close(self) -> None:
        self._db.close()


# -- requests ----------------------------------------------------------------------
def make_request(
    path: str,
    *,
    action: str,
    level: str | None,
    until: str | None,
    scope: str | None,
    basis: str | None,
    title: str | None,
    register_id: str | None,
    responsible: str | None,
    key: bytes | None,
) -> events_pb2.LabelRequest:
    """A checked request for the file at ``path``; AgentError says what to fix."""
    if action not in ACTIONS:
        raise AgentError(f"--action must be one of {', '.join(ACTIONS)}")
    file = Path(path)
    if not file.is_file():
        raise AgentError(f"{path}: not a regular file; a request names one file")
    try:
        label = labels.read_label(file, key)
    except OSError as e:
        raise AgentError(f"cannot read the label of {path}: {e.strerror}") from e
    home = label.home if label is not None and label.valid and label.home else str(file.resolve())
    if action == "classify":
        missing = [
            n for n, v in (("--level", level), ("--basis", basis), ("--title", title)) if not v
        ]
        if missing:
            raise AgentError(f"a classification request needs {', '.join(missing)}")
    else:
        register_id = register_id or (label.label_id if label is not None else None)
        if not register_id:
            raise AgentError(f"a {action} request needs --id, the register entry of {path}")
    try:
        level_number = labels.parse_level(level) if level else labels.UNCLASSIFIED
        until_text = labels.parse_until(until).isoformat() if until else ""
        scope_entries = labels.parse_scope(scope or "")
    except ValueError as e:
        raise AgentError(str(e)) from e
    if action == "change" and level is None and label is not None and label.valid:
        level_number = label.level
    try:
        digest = content_hash(file)
    except OSError as e:  # the guard may deny root a read of a classified file
        _logger.warning("cannot read %s to hash it (%s); requested without a hash", path, e)
        digest = ""
    return events_pb2.LabelRequest(
        request_id=f"req-{secrets.token_hex(8)}",
        action=action,
        register_id=register_id or "",
        path=home,
        content_hash=digest,
        level=level_number,  # type: ignore[arg-type]
        until=until_text,
        scope=scope_entries,
        basis=basis or "",
        title=title or "",
        requester=os.environ.get("SUDO_USER") or getpass.getuser(),
        responsible=responsible or "",
    )


def spool_request(state_dir: Path, request: events_pb2.LabelRequest) -> int:
    """Spool the request as an event of this host; its seq."""
    spool = Spool(state_dir / "spool.db")
    try:
        event = events_pb2.Event(severity=events_pb2.SEVERITY_INFO, label_request=request)
        spool.append([event])
    finally:
        spool.close()
    return event.seq


# -- inventory ---------------------------------------------------------------------
class Inventory:
    """The labelled files under the protected trees, hashed once per file version."""

    def __init__(
        self, roots: Sequence[Path], key: Callable[[], bytes | None], hashes: Path
    ) -> None:
        self._roots = [Path(r) for r in roots]
        self._key = key
        self._hashes_path = hashes
        self._hashes: ContentHashes | None = None  # opened at the first pass
        self._scanning = threading.Lock()  # one pass at a time (orders, the periodic look)
        #: SHA-256 of the last inventory made (deterministic serialisation), kept instead
        #: of that message of every labelled file (~1 MB resident for 2,000 files).
        self._last: bytes | None = None
        #: The file guard's count of changes in the trees (FileSensor.tree_changes), when
        #: it runs: the trees are walked again only after a change, or every
        #: RESCAN_SECONDS (what the change watcher cannot see: a queue overflow).
        self.changes: Callable[[], int] | None = None
        self._walked: tuple[int, float] | None = None  # changes counted, monotonic time

    def scan(self) -> events_pb2.LabelInventory:
        """Walk the trees now."""
        inventory = events_pb2.LabelInventory()
        with self._scanning:
            if self._hashes is None:
                self._hashes = ContentHashes(self._hashes_path)
            hashes = self._hashes
            try:
                hashes.begin()
                try:
                    inventory.truncated = self._walk(hashes, inventory)
                except BaseException:
                    hashes.abandon()
                    raise
                hashes.end(complete=not inventory.truncated)
            except sqlite3.DatabaseError:
                # Damaged while in use (the disk, or a hand): the next pass starts afresh.
                hashes.close()
                hashes.discard()
                self._hashes = None
                raise
        return inventory

    def _walk(self, hashes: ContentHashes, inventory: events_pb2.LabelInventory) -> bool:
        """List each labelled file (home, label, SHA-256) in ``inventory``, in the walk's
        order (names sorted: the same trees give the same message); True when there are
        more than one inventory lists.

        Each file goes into the message as it is found, and its Python objects are
        freed before the next one: a pass that kept them all (~350 bytes a file) would
        grow Python's allocator by as much, and it keeps what it grew resident in a
        long-running agent (~1 MB for 2,000 files, measured).
        """
        key = self._key()
        for path in self._files():
            if len(inventory.files) >= MAX_INVENTORY_FILES:
                return True
            try:
                label = labels.read_label(path, key)
                if label is None:
                    continue
                st = os.stat(path)  # noqa: PTH116 - see _files
                version = _VERSION.pack(
                    st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size
                )
                digest = hashes.digest(version, path)
            except OSError:
                continue  # gone meanwhile, or unreadable: not listed this time
            inventory.files.add(
                home=label.home or path,
                register_id=label.label_id or "",
                level=label.level,
                until=label.until.isoformat() if label.until else "",
                scope=label.scope,
                content_hash=digest.hex(),
                problem=label.problem or "",
            )
        return False

    def _files(self) -> Iterable[str]:
        # Plain strings, not Path objects: a Path interns every name it parses, and the
        # interned names of a large tree stay in memory until the agent stops.
        for root in self._roots:
            for parent, dirs, names in os.walk(root):
                dirs.sort()  # the walk's order is the inventory's
                for name in sorted(names):
                    path = os.path.join(parent, name)  # noqa: PTH118 - see above
                    try:
                        if stat.S_ISREG(os.lstat(path).st_mode):
                            yield path
                    except OSError:
                        continue  # gone meanwhile

    def walk_next(self) -> None:
        """Walk the trees at the next look: the agent changed a label itself (the
        change watcher does not report the agent's own attribute changes)."""
        self._walked = None

    def changed(self) -> events_pb2.LabelInventory | None:
        """A new inventory when it differs from the last one reported, else None (and
        always None on a host that guards no tree: it has nothing to list)."""
        if not self._roots:
            return None
        counted = self.changes() if self.changes is not None else None
        walked = self._walked
        if (
            self._last is not None
            and counted is not None
            and walked is not None
            and walked[0] == counted
            and time.monotonic() - walked[1] < RESCAN_SECONDS
        ):
            return None  # nothing changed in the trees since the last walk
        now = self.scan()
        if counted is not None:  # counted before the walk: a change during it walks again
            self._walked = (counted, time.monotonic())
        digest = hashlib.sha256(now.SerializeToString(deterministic=True)).digest()
        if digest == self._last:
            return None
        self._last = digest
        return now


# -- orders ------------------------------------------------------------------------
class LabelOrders:
    """Verifies and applies the collector's label orders; reports the inventory."""

    def __init__(
        self,
        state_dir: Path,
        identity: Identity,
        emit: Callable[[events_pb2.Event], None],
        *,
        roots: Sequence[Path],
        label_key: Path,
    ) -> None:
        self._verify_key = SigningKey(identity.signing_pub_pem)
        self._identity = identity
        self._emit = emit
        self._label_key_path = label_key  # the key the file guard checks seals with
        self._done_path = state_dir / DONE_FILE
        self.inventory = Inventory(roots, self._label_key, state_dir / HASHES_FILE)

    def _label_key(self) -> bytes | None:
        try:
            return labels.load_label_key(self._label_key_path)
        except LabelError:
            return None  # no label key yet: no label here is sealed

    def _done(self) -> set[str]:
        try:
            return set(self._done_path.read_text().split())
        except FileNotFoundError:
            return set()

    def verify(self, order: collector_pb2.LabelOrder) -> None:
        """OrderError unless ``order`` is signed by the collector and for this host."""
        if not self._verify_key.verifies(order.signature, order_signed_bytes(order)):
            raise OrderError(f"label order {order.order_id[:40]!r}: the signature does not verify")
        if order.host_id != self._identity.host_id:
            raise OrderError(f"label order {order.order_id} is for host {order.host_id[:64]!r}")
        if order.action not in (*ACTIONS, "destroy"):
            raise OrderError(f"label order {order.order_id}: unknown action {order.action[:20]!r}")

    def offer(self, order: collector_pb2.LabelOrder) -> bool:
        """Verify and apply ``order`` (once); report the outcome. True when applied."""
        if order.order_id in self._done():
            return True
        try:
            self.verify(order)
        except OrderError as e:
            # A forged order never reaches the register: report it as tampering.
            _logger.error("%s", e)
            self._emit(
                events_pb2.Event(
                    severity=events_pb2.SEVERITY_HIGH,
                    tamper=events_pb2.Tamper(kind="label_order_refused", detail=str(e)[:2000]),
                )
            )
            return False
        if order.action == "destroy":
            # Kept until the named person carries it out (agent/destroy.py), which
            # reports the result; nothing happens to the file now.
            from agent.destroy import keep_order  # noqa: PLC0415 - imports this module

            keep_order(self._done_path.parent, order)
            return True
        result = events_pb2.LabelOrderResult(
            order_id=order.order_id,
            register_id=order.register_id,
            home=order.home,
            level=order.level,
        )
        try:
            result.content_hash = self._apply(order)
            result.ok = True
        except (OrderError, LabelError) as e:
            result.error = str(e)[:2000]
            _logger.error("label order %s not applied: %s", order.order_id, e)
        with self._done_path.open("a") as f:
            f.write(order.order_id + "\n")
        self._emit(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO if result.ok else events_pb2.SEVERITY_MEDIUM,
                label_order_result=result,
            )
        )
        self.inventory.walk_next()
        self.report_inventory()
        return result.ok

    def _apply(self, order: collector_pb2.LabelOrder) -> str:
        """Label the file the order names; the content hash it was applied to."""
        home = order.home
        if Path(home).is_symlink() or not Path(home).is_file():
            # A link put in the file's place would move the label onto what it points to.
            raise OrderError(f"{home}: not a regular file (a symlink or missing)")
        key = labels.load_label_key(self._label_key_path, create=True)
        try:
            digest = content_hash(home)
            label = labels.read_label(home, key)
        except OSError as e:
            raise OrderError(f"{home}: {e.strerror}") from e
        if order.content_hash and digest != order.content_hash:
            raise OrderError(
                f"{home}: the content changed since the request (SHA-256 {digest[:12]}..., "
                f"approved {order.content_hash[:12]}...): request again"
            )
        if order.action != "classify" and (label is None or label.label_id != order.register_id):
            raise OrderError(
                f"{home}: carries no label of register {order.register_id}; "
                "it was relabelled or replaced"
            )
        labels.set_label(
            home,
            order.level,
            until=date.fromisoformat(order.until) if order.until else None,
            scope=tuple(order.scope),
            label_id=order.register_id,
            key=key,
            home=home,
        )
        return digest

    def report_inventory(self) -> None:
        """Send the inventory if it changed since the last one sent."""
        inventory = self.inventory.changed()
        if inventory is not None:
            self._emit(
                events_pb2.Event(severity=events_pb2.SEVERITY_INFO, label_inventory=inventory)
            )

    async def run(self, every_seconds: float, retry_seconds: float = 5.0) -> None:
        """Follow the collector's label orders and report the inventory until cancelled."""
        watching = asyncio.create_task(self._watch(retry_seconds))
        try:
            while True:
                try:
                    await asyncio.to_thread(self.report_inventory)
                except Exception:
                    _logger.exception("the label inventory failed; trying again")
                return_freed_heap()  # the pass read every label of the trees
                await asyncio.sleep(every_seconds)
        finally:
            watching.cancel()

    async def _watch(self, retry_seconds: float) -> None:
        channel = grpc.aio.secure_channel(self._identity.collector, self._identity.credentials())
        try:
            while True:
                try:
                    call = channel.unary_stream(
                        "/baomi.v1.Collector/WatchOrders",
                        request_serializer=collector_pb2.WatchOrdersRequest.SerializeToString,
                        response_deserializer=collector_pb2.LabelOrder.FromString,
                    )(collector_pb2.WatchOrdersRequest())
                    async for order in call:
                        await asyncio.to_thread(self.offer, order)
                except grpc.aio.AioRpcError as e:
                    _logger.info("label order watch ended (%s); retrying", e.code().name)
                await asyncio.sleep(retry_seconds)
        finally:
            await channel.close(grace=None)
