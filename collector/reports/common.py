"""What every report shares: the Report value, its digest, the record's verification,
the register of cleared staff, findings, and time formatting."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi.policy.errors import PolicyError
from baomi.policy.subjects import Subjects

from collector import audit, pki
from collector.errors import CollectorError, ConfigError
from collector.policy import MAX_POLICY_FILE_BYTES, bundle_digest
from collector.reports.period import CHINA_TZ, from_us
from collector.store.base import EventQuery, EventRow, FindingRow, Store

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the figures' layout; part of what the digest covers


class ReportError(CollectorError):
    """A report cannot be made as asked (unknown person, host, period or format)."""


@dataclass
class Report:
    """A built report: digested figures, plus facts about its making that are not digested.

    ``figures`` is plain JSON data (ints, strings, lists, dicts, bools): every number the
    document prints comes from it, and ``digest`` is SHA-256 over its canonical form.
    ``meta`` holds what describes the record at generation rather than the period:
    generation time, the chain verification summary.
    """

    kind: str  # inspection, leaver, host
    subject: str  # period name, login name, or HOST@PERIOD
    figures: dict[str, Any]
    meta: dict[str, Any]
    digest: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    #: charts per language, drawn once however many formats are rendered
    charts: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = content_digest(self.figures)


def canonical_json(figures: dict[str, Any]) -> bytes:
    """The one serialization the digest covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(figures, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def content_digest(figures: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical figures, as printed on every page."""
    return hashlib.sha256(canonical_json(figures)).hexdigest()


def local_time(when_us: int, tz: dt.tzinfo = CHINA_TZ) -> str:
    """``2026-11-27 08:00:05`` in local time, or "" for 0 (never)."""
    if not when_us:
        return ""
    return from_us(when_us, tz).strftime("%Y-%m-%d %H:%M:%S")


def iso_local(when: dt.datetime, tz: dt.tzinfo = CHINA_TZ) -> str:
    """An instant as ISO 8601 in local time, to the second."""
    return when.astimezone(tz).isoformat(timespec="seconds")


def scan_range(
    store: Store, since_us: int | None, until_us: int | None, host_id: str | None = None
) -> Iterator[EventRow]:
    """Every event in ``[since_us, until_us)`` (of one host, or all), oldest first."""
    return store.scan(EventQuery(host_id=host_id, since_us=since_us, until_us=until_us, limit=None))


def load_subjects(policies_dir: Path) -> tuple[Subjects | None, str]:
    """The register of cleared staff and its SHA-256, or (None, "") when there is none."""
    path = policies_dir / "subjects.toml"
    if not path.is_file():
        _logger.warning("no register of cleared staff at %s: people shown by login only", path)
        return None, ""
    try:
        subjects = Subjects.load(path)
    except PolicyError as e:
        raise ConfigError(f"cannot read the register of cleared staff: {e}") from e
    return subjects, hashlib.sha256(path.read_bytes()).hexdigest()


def expected_policy_version(policies_dir: Path) -> str:
    """The bundle version the collector publishes for ``policies_dir`` ("" if unreadable).

    Computed the way ``PolicyService.load_directory`` does, so it equals the version an
    agent enforcing that directory reports in its heartbeats.
    """
    try:
        files = {
            p.name: p.read_bytes()
            for p in sorted(policies_dir.iterdir())
            if p.is_file() and p.stat().st_size <= MAX_POLICY_FILE_BYTES
        }
    except OSError:
        return ""
    return bundle_digest(files) if files else ""


def read_findings(store: Store) -> list[FindingRow] | None:
    """Every finding (console), or None when this store keeps none.

    Findings live in the console's tables; a store opened by an older collector, or a
    backend without them yet, has no such table, and the report says so instead of
    failing.
    """
    findings = getattr(store, "findings", None)
    if findings is None:
        return None
    try:
        rows: list[FindingRow] = findings()
    except Exception as e:  # noqa: BLE001 - any driver's "no such table" means none
        _logger.warning("findings not read (%s): the report shows none", e)
        return None
    return rows


def _audit(store: Store, key_path: Path, witness_path: Path | None = None) -> dict[str, Any]:
    """``audit.verify`` of the whole record (against the witness file when there is one),
    in picklable form."""
    started = time.perf_counter()
    result = audit.verify_witnessed(store, pki.load_verify_key(key_path), witness_path)
    return {
        "ok": result.ok,
        "hosts": result.hosts,
        "events": result.events,
        "checkpoints": result.checkpoints,
        "damage": [(d.host_id, d.seq) for d in result.damage],
        "examples": [str(d) for d in result.damage[:10]],
        "recorded_breaks": len(result.recorded_breaks),
        "unanchored": result.unanchored,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _audit_at(store_url: str, key_path: str, witness_path: str | None) -> dict[str, Any]:
    """``_audit`` in a worker process, over a store of its own."""
    from collector.store import open_store  # noqa: PLC0415 - runs in the worker only

    store = open_store(store_url)
    try:
        return _audit(store, Path(key_path), Path(witness_path) if witness_path else None)
    finally:
        store.close()


class Verification:
    """``audit.verify`` over the whole record, started before the report's own passes.

    Given the store's URL, verification runs in a worker process of its own while this
    one aggregates the period (both are CPU-bound, and a collector host has more than
    one core); without a URL it runs in this process when ``result`` is asked for.
    """

    def __init__(
        self,
        store: Store,
        key_path: Path | None,
        store_url: str | None = None,
        witness_path: Path | None = None,
    ):
        self._store = store
        self._witness = witness_path
        self._key = key_path if key_path is not None and key_path.is_file() else None
        self._key_shown = str(key_path or "")
        self._future: concurrent.futures.Future[dict[str, Any]] | None = None
        if self._key is not None and store_url:
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            witness = str(witness_path) if witness_path is not None else None
            self._future = pool.submit(_audit_at, store_url, str(self._key), witness)
            pool.shutdown(wait=False)  # the worker ends after its one task

    def result(self, period_seqs: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
        """The summary for a cover page; ``period_seqs`` (host -> first and last seq in
        the period) tells which damage lies inside the reported period."""
        if self._key is None:
            return {"ok": False, "verified": False, "key": self._key_shown}
        if self._future is not None:
            try:
                found = self._future.result()
            except (OSError, concurrent.futures.process.BrokenProcessPool) as e:
                _logger.warning("verification worker failed (%s); verifying here", e)
                found = _audit(self._store, self._key, self._witness)
        else:
            found = _audit(self._store, self._key, self._witness)
        spans = period_seqs or {}
        damage: list[tuple[str, int]] = found.pop("damage")
        in_period = sum(
            1 for host, seq in damage if host in spans and spans[host][0] <= seq <= spans[host][1]
        )
        return {**found, "verified": True, "damage": len(damage), "damage_in_period": in_period}


def person_fields(subjects: Subjects | None, login: str) -> dict[str, Any]:
    """Display name, department, clearance and status of a login (blank when unknown)."""
    person = subjects.find(login) if subjects is not None and login else None
    if person is None:
        return {"user": login, "name": "", "department": "", "clearance": -1, "status": ""}
    return {
        "user": person.name,
        "name": person.display,
        "department": person.department,
        "clearance": person.clearance,
        "status": person.status,
    }
