"""The store interface every backend implements, and the rows it speaks in.

Events are append-only: a backend offers no way to change or remove one, and its schema
refuses UPDATE and DELETE on the events table with a trigger.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event: indexed columns beside the canonical bytes they came from."""

    host_id: str
    seq: int
    kind: str
    severity: int
    event_time_us: int  # agent's clock, microseconds since the epoch
    received_us: int  # collector's clock when the batch arrived
    hash: bytes  # SHA-256 of body
    body: bytes  # canonical serialization of the Event (baomi.chain)


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A single-use enrolment token, stored only as its SHA-256."""

    token_hash: bytes
    host_id: str
    expires_us: int
    used_us: int | None


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A signed statement of every chain head at one moment."""

    id: int
    created_us: int
    body: bytes  # canonical JSON, see collector.checkpoint
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EventQuery:
    """Filters for reading the record; ``None`` means any."""

    host_id: str | None = None
    kind: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int | None = 1000
    #: leave out routine heartbeats: agent_status events of severity INFO (an alarm
    #: such as spool_full is HIGH and stays)
    fold_heartbeats: bool = False


# -- reports ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    """A generated report kept at the collector; the document bytes are stored beside it."""

    id: int = 0  # assigned by the store
    kind: str  # inspection, leaver, host
    subject: str  # the period (2026-H2), the login name, or HOST@PERIOD
    fmt: str  # pdf, html
    lang: str  # zh, en
    created_us: int
    digest: str  # SHA-256 hex of the canonical figures, as printed on every page
    size: int  # bytes of the document
    path: str = ""  # where the file was also written, "" when only stored
    scheduled: bool = False  # made by the scheduler rather than on request


class Store(Protocol):
    """What the collector needs from a database."""

    def close(self) -> None:
        """Release connections."""

    def leases(self) -> HostLeases:
        """The per-host leases of the collectors serving from this store (one object per
        collector; ``HostLeases.close`` gives them all back). A store only one collector
        may serve (SQLite) is claimed for this process here, or StoreError says which
        collector holds it."""

    # -- events --------------------------------------------------------------------
    def append(self, rows: Sequence[EventRow]) -> int:
        """Insert ``rows`` in one transaction, skipping (host_id, seq) already stored.

        Returns how many were new. Durable when it returns.
        """

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every host's highest stored seq and that event's hash."""

    def head(self, host_id: str) -> tuple[int, bytes] | None:
        """One host's highest stored seq and its hash, or None before its first event."""

    def hashes(self, host_id: str, first_seq: int, last_seq: int) -> dict[int, bytes]:
        """Stored hashes of ``host_id`` for seqs in [first_seq, last_seq]."""

    def received_times(self, host_id: str, first_seq: int, last_seq: int) -> list[tuple[int, int]]:
        """(seq, received_us) of ``host_id``'s events in [first_seq, last_seq], in order."""

    def chain(self, host_id: str) -> Iterator[EventRow]:
        """Every stored event of ``host_id`` in seq order (streamed, not loaded at once)."""

    def query(self, q: EventQuery) -> list[EventRow]:
        """Events matching ``q``, newest first."""

    def received_keys(self, kind: str, since_us: int) -> list[tuple[str, int, int]]:
        """(host_id, seq, received_us) of a rare kind's events received from ``since_us``
        on, in the order received (bodies unread)."""

    def count(self) -> int:
        """How many events are stored."""

    # -- hosts and enrolment ---------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        """Store a new enrolment token."""

    def token_host(self, token_hash: bytes, now_us: int) -> str | None:
        """The host of a token still usable (unknown, used or expired: None); not used."""

    def use_token(self, token_hash: bytes, now_us: int) -> str | None:
        """Mark the token used and return its host, or None if unknown, used or expired."""

    def add_host(self, host_id: str, cert_sha256: bytes, now_us: int) -> None:
        """Record an enrolled host's certificate fingerprint; it retires any earlier one."""

    def host_certificates(self, host_id: str) -> list[bytes]:
        """SHA-256 fingerprints of the certificates ``host_id`` may stream with (one)."""

    def hosts(self) -> list[str]:
        """Every host that has enrolled or has stored events."""

    # -- checkpoints ---------------------------------------------------------------
    def add_checkpoint(self, created_us: int, body: bytes, signature: bytes) -> int:
        """Store a signed checkpoint and return its id."""

    def add_checkpoint_after(
        self, prev_id: int, created_us: int, body: bytes, signature: bytes
    ) -> int | None:
        """Store a signed checkpoint if checkpoint ``prev_id`` (0: none yet) is still the
        newest, and return its id; None when another was stored meanwhile. Atomic across
        every collector on the store, so checkpoints never fork."""

    def last_checkpoint(self) -> CheckpointRow | None:
        """The newest checkpoint, or None before the first."""

    def checkpoints(self) -> list[CheckpointRow]:
        """Every checkpoint, oldest first."""

    # -- reports ---------------------------------------------------------------------
    def scan(self, q: EventQuery) -> Iterator[EventRow]:
        """Events matching ``q`` oldest first (event_time, host_id, seq), streamed.

        Rows are read in chunks, never all at once, so a report can pass over millions
        of events in bounded memory. ``q.limit`` applies when it is not None.
        """

    def add_report(self, row: ReportRow, document: bytes) -> int:
        """Store a generated report and its document; return the new id."""

    def reports(self, kind: str | None = None) -> list[ReportRow]:
        """Stored reports (of ``kind``, or all), newest first, without their documents."""

    def report_document(self, report_id: int) -> bytes | None:
        """The document of one stored report, or None when there is no such report."""

    # -- console -------------------------------------------------------------------
    # Accounts, sessions, policy versions, findings and settings of the web console
    # (collector/console), and the event reads its pages need.

    def add_account(self, account: AccountRow) -> bool:
        """Store a new account; False when the name is taken."""

    def account(self, name: str) -> AccountRow | None:
        """One account, or None."""

    def accounts(self) -> list[AccountRow]:
        """Every account, by name."""

    def grant_role(self, name: str, role: str, by: str, now_us: int, password_hash: str) -> bool:
        """Give ``role`` to an enabled account that has none yet, with a new one-time
        password and no sessions left; False otherwise (one role each)."""

    def revoke_role(self, name: str) -> bool:
        """Take an account's role and end its sessions; False when it has none or is the
        last enabled account of its role."""

    def disable_account(self, name: str, by: str, now_us: int) -> bool:
        """Disable an enabled account and end its sessions; False when it is unknown,
        disabled already, or the last enabled account of its role."""

    def enable_account(self, name: str) -> bool:
        """Enable a disabled account; False when it is not disabled."""

    def set_password(self, name: str, password_hash: str, *, must_change: bool) -> None:
        """Replace an account's password hash."""

    def backoff(self, key: str) -> tuple[int, int] | None:
        """Failed attempts counted under ``key`` (a name or a client address) and the time
        of the last one, or None."""

    def backoff_failed(self, key: str, now_us: int, forget_us: int) -> int:
        """Count a failed attempt under ``key`` (starting again when the last one is older
        than ``forget_us``); the count after. Forgotten keys are removed."""

    def backoff_clear(self, key: str) -> None:
        """Forget the failed attempts counted under ``key``."""

    def queue_action(self, action: PendingAction) -> None:
        """Keep an account action taken on the command line until the collector, which
        alone appends to its chain, records it."""

    def pending_actions(self) -> list[PendingAction]:
        """Queued command-line actions, oldest first."""

    def drop_action(self, action_id: int) -> None:
        """Remove a queued action once it is recorded."""

    def add_session(self, session: SessionRow) -> None:
        """Store a new login session (by the SHA-256 of its token)."""

    def session(self, token_hash: bytes) -> SessionRow | None:
        """A session by its token hash, or None."""

    def touch_session(self, token_hash: bytes, now_us: int) -> None:
        """Note that a session was used now (for its idle timeout)."""

    def end_sessions(self, *, token_hash: bytes | None = None, name: str | None = None) -> None:
        """Remove one session, or every session of an account."""

    def add_policy_version(
        self, version: str, author: str, created_us: int, note: str, files: dict[str, bytes]
    ) -> int:
        """Store a published policy and return its number (1, 2, ...)."""

    def policy_versions(self, limit: int = 100) -> list[PolicyVersionRow]:
        """Published policies, newest first, without their files."""

    def policy_version(self, number: int | None = None) -> PolicyVersionRow | None:
        """One published policy with its files; the newest when ``number`` is None."""

    def add_finding(self, finding: FindingRow) -> int:
        """Store a new finding (its id is assigned) and return the id."""

    def update_finding(
        self, finding_id: int, *, owner: str, due: str, status: str, note: str, by: str, now_us: int
    ) -> bool:
        """Change a finding's owner, due date, status and note; False if unknown."""

    def findings(self, status: str | None = None) -> list[FindingRow]:
        """Findings, newest first, optionally of one status."""

    def finding(self, finding_id: int) -> FindingRow | None:
        """One finding, or None."""

    def settings(self) -> dict[str, str]:
        """The console's stored settings."""

    def set_setting(self, key: str, value: str) -> None:
        """Store one setting."""

    def decommission(self, host_id: str, by: str, now_us: int) -> None:
        """Forget a host's certificates (its agent can no longer connect) and mark it."""

    def recommission(self, host_id: str) -> None:
        """Clear a host's decommissioned mark (a new enrolment token was made for it)."""

    def decommissioned(self) -> dict[str, int]:
        """Decommissioned hosts and when."""

    def console_events(self, q: ConsoleQuery) -> list[EventRow]:
        """Events matching ``q``, newest first (event time, then host, then seq)."""

    def event(self, host_id: str, seq: int) -> EventRow | None:
        """One stored event, or None."""

    def events_after(self, host_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """Up to ``limit`` events of ``host_id`` with seq > ``after_seq``, in seq order."""

    def severity_counts(
        self, since_us: int, bucket_us: int, min_severity: int
    ) -> list[tuple[int, int, int]]:
        """(bucket start, severity, count) of events since ``since_us`` with severity at
        least ``min_severity``, bucketed by event time."""


class HostLeases(Protocol):
    """Who serves each host's stream: one collector at a time.

    A lease is held on something that dies with the collector (a database session), so a
    collector that crashes or loses its database loses its leases with it. Every lease
    is taken under a generation (the holding session); when that session is gone,
    ``alive`` answers another generation and the leases of the old one are lost.
    """

    def take(self, host_id: str) -> int | None:
        """Take ``host_id``'s lease without waiting; the generation holding it, or None
        when another collector holds it. Raises StoreError when the store is gone."""

    def give_back(self, host_id: str, generation: int) -> None:
        """Release a lease taken in ``generation`` (nothing when that one is gone)."""

    def alive(self) -> int | None:
        """The generation whose leases still hold, after a round trip; None when the
        store cannot be reached (every lease is lost)."""

    def close(self) -> None:
        """Give back every lease."""


# -- console ----------------------------------------------------------------------------
ROLES = ("sysadmin", "secadmin", "auditor")
#: Kinds that make up most of the record. The console's kind index leaves them out, so
#: it stays small and cheap to keep up at ingest (their pages find rows by time).
BULK_KINDS = ("file_access", "agent_status", "file_change")
#: The SQL terms that define the console's two partial indexes. A query names the term
#: itself, verbatim, so that both databases see that the index applies.
RARE_KIND_TERM = "kind NOT IN ('file_access', 'agent_status', 'file_change')"
VIOLATION_SEVERITY = 3  # SEVERITY_MEDIUM: from here on an event is a violation
VIOLATION_TERM = "severity >= 3"


@dataclass(frozen=True, slots=True)
class AccountRow:
    """A console login. One role each; None until a security administrator grants one."""

    name: str
    role: str | None
    password_hash: str  # argon2id, PHC string
    must_change: bool  # set by an administrator: the owner must choose a new one
    failed: int  # failed logins since the last success or lockout
    locked_until_us: int
    created_us: int
    created_by: str
    granted_by: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class PendingAction:
    """An account action taken with ``baomi-collector user``, waiting to be recorded."""

    id: int  # 0 until stored
    at_us: int
    actor: str
    action: str
    target: str
    detail: str
    ok: bool = True  # False when the command refused it


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A console session, stored only as the SHA-256 of its cookie token."""

    token_hash: bytes
    name: str
    csrf: str  # the token every form and state-changing request must carry
    created_us: int
    seen_us: int


@dataclass(frozen=True, slots=True)
class PolicyVersionRow:
    """A published policy: who, when, why, and (when asked for) the files."""

    number: int
    version: str  # content digest, the bundle's version
    author: str
    created_us: int
    note: str
    files: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class FindingRow:
    """A violation followed to closure (整改): owner, due date, status."""

    id: int
    host_id: str
    seq: int
    title: str
    severity: int
    owner: str
    due: str  # ISO date, empty when none
    status: str  # open, rectifying, closed
    note: str
    created_us: int
    created_by: str
    updated_us: int
    updated_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleQuery:
    """Filters of the console's events page; ``None`` means any.

    ``contains`` is a byte string the stored body must contain: a cheap pre-filter the
    console refines by decoding (a user or path is stored verbatim in the body).
    ``before`` pages backwards: only events ordered after (event_time, host_id, seq).
    """

    host_id: str | None = None
    kind: str | None = None
    min_severity: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    contains: bytes | None = None
    before: tuple[int, str, int] | None = None
    limit: int = 100
    fold_heartbeats: bool = False  # see EventQuery
