"""Scheduled reports: the monthly and half-yearly inspection reports, made once each.

``generate_due`` makes every scheduled report whose period has ended (plus a grace day
for agents that were offline to deliver their spools), writes the documents to a
directory and stores them with their metadata in the store's ``reports`` table, where
the console lists them (``list_reports``). A report already stored for a period is not
made again. ``run_scheduler`` calls it periodically from the collector's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.errors import CollectorError
from collector.reports.common import Report
from collector.reports.inspection import build_inspection
from collector.reports.period import Period, last_complete, to_us
from collector.reports.render import render
from collector.store.base import ReportRow, Store

_logger = logging.getLogger(__name__)

#: (period kind) of every scheduled inspection report.
SCHEDULE: tuple[str, ...] = ("month", "half")
GRACE = dt.timedelta(days=1)  # wait this long after a period ends: late spools arrive
CHECK_SECONDS = 3600.0  # how often run_scheduler looks for due reports


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """What scheduled reports contain and where they go."""

    out_dir: Path
    policies_dir: Path = Path("policies")
    verify_key_path: Path | None = None
    witness_path: Path | None = None  # the collector's witness file (serve --witness)
    unit: str = ""
    lang: str = "zh"
    formats: Sequence[str] = ("pdf", "html")
    schedule: Sequence[str] = field(default_factory=lambda: SCHEDULE)
    store_url: str | None = None  # lets verification run in a worker process


def due_periods(store: Store, now: dt.datetime, schedule: Sequence[str] = SCHEDULE) -> list[Period]:
    """Scheduled periods that have ended (with the grace day) and have no stored report."""
    made = {r.subject for r in store.reports("inspection") if r.scheduled}
    periods = [last_complete(kind, now - GRACE) for kind in schedule]
    return [p for p in periods if p.name not in made]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by rename, so a reader never sees half a document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def store_report(
    store: Store,
    report: Report,
    *,
    fmt: str,
    lang: str,
    document: bytes,
    now: dt.datetime,
    path: Path | None = None,
    scheduled: bool = False,
) -> ReportRow:
    """Keep a rendered report in the store (and say where its file is, if written)."""
    row = ReportRow(
        kind=report.kind,
        subject=report.subject,
        fmt=fmt,
        lang=lang,
        created_us=to_us(now),
        digest=report.digest,
        size=len(document),
        path=str(path) if path is not None else "",
        scheduled=scheduled,
    )
    return dataclasses.replace(row, id=store.add_report(row, document))


def generate_due(
    store: Store,
    out_dir: Path,
    now: dt.datetime | None = None,
    *,
    policies_dir: Path = Path("policies"),
    verify_key_path: Path | None = None,
    witness_path: Path | None = None,
    unit: str = "",
    lang: str = "zh",
    formats: Sequence[str] = ("pdf", "html"),
    schedule: Sequence[str] = SCHEDULE,
    store_url: str | None = None,
) -> list[ReportRow]:
    """Make every due scheduled report into ``out_dir`` and the store; return the rows."""
    cfg = ScheduleConfig(
        out_dir=out_dir,
        policies_dir=policies_dir,
        verify_key_path=verify_key_path,
        witness_path=witness_path,
        unit=unit,
        lang=lang,
        formats=formats,
        schedule=schedule,
        store_url=store_url,
    )
    return generate_due_with(store, cfg, now)


def generate_due_with(
    store: Store, cfg: ScheduleConfig, now: dt.datetime | None = None
) -> list[ReportRow]:
    """``generate_due`` with a ready ``ScheduleConfig``."""
    now = now or dt.datetime.now(dt.UTC)
    stored: list[ReportRow] = []
    for period in due_periods(store, now, cfg.schedule):
        _logger.info("making the scheduled inspection report for %s", period.name)
        report = build_inspection(
            store,
            period,
            policies_dir=cfg.policies_dir,
            verify_key_path=cfg.verify_key_path,
            witness_path=cfg.witness_path,
            unit=cfg.unit,
            now=now,
            store_url=cfg.store_url,
        )
        for fmt in cfg.formats:
            document = render(report, fmt, cfg.lang)
            path = cfg.out_dir / f"inspection-{period.name}.{cfg.lang}.{fmt}"
            _write_atomically(path, document)
            stored.append(
                store_report(
                    store,
                    report,
                    fmt=fmt,
                    lang=cfg.lang,
                    document=document,
                    now=now,
                    path=path,
                    scheduled=True,
                )
            )
    return stored


def list_reports(store: Store, kind: str | None = None) -> list[ReportRow]:
    """Stored reports (of ``kind``, or all), newest first: what the console lists."""
    return store.reports(kind)


def report_document(store: Store, report_id: int) -> bytes | None:
    """The stored document of one report (PDF or HTML bytes), or None."""
    return store.report_document(report_id)


async def run_scheduler(
    store: Store,
    cfg: ScheduleConfig,
    *,
    check_seconds: float = CHECK_SECONDS,
    leads: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Make due reports now and every ``check_seconds`` until cancelled; with ``leads``,
    only while it answers True (of collectors sharing a store, the one that signs
    checkpoints makes the scheduled reports, so a period gets one set, not one each).

    The work runs in a thread: a half-year report takes seconds of CPU, and the
    collector's event loop must keep acknowledging batches meanwhile.
    """
    while True:
        try:
            if leads is not None and not await leads():
                await asyncio.sleep(check_seconds)
                continue
            made = await asyncio.to_thread(generate_due_with, store, cfg)
            for row in made:
                _logger.info(
                    "scheduled report %s %s (%s) stored as #%d",
                    row.kind,
                    row.subject,
                    row.fmt,
                    row.id,
                )
        except (CollectorError, OSError) as e:
            _logger.error("scheduled reports not made: %s; retrying in %.0f s", e, check_seconds)
        await asyncio.sleep(check_seconds)
