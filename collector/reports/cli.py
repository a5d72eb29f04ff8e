"""``baomi-collector report ...``: make, schedule and list reports from the command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.reports.common import Report, ReportError, canonical_json
from collector.reports.destruction import build_destruction
from collector.reports.host import build_host
from collector.reports.inspection import build_inspection
from collector.reports.leaver import build_leaver
from collector.reports.render import FORMATS, render
from collector.reports.schedule import generate_due, list_reports, report_document, store_report
from collector.reports.text import LANGS
from collector.store import open_store

_logger = logging.getLogger(__name__)

DEFAULT_PKI = Path("var/pki")
DEFAULT_POLICIES = Path("policies")


def _format(args: argparse.Namespace) -> str:
    """``--format``, or the one the ``--out`` suffix names, or pdf."""
    if args.format:
        return str(args.format)
    suffix = args.out.suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "pdf"


def _key(args: argparse.Namespace) -> Path | None:
    key: Path = args.pki / "signing.pub"
    if not key.is_file():
        _logger.warning("no %s: the report will say the record was not verified", key)
        return None
    return key


def _emit(args: argparse.Namespace, build: Callable[..., Report]) -> int:
    fmt = _format(args)
    store = open_store(args.store)
    try:
        now = dt.datetime.now(dt.UTC)
        report = build(
            store,
            policies_dir=args.policies,
            verify_key_path=_key(args),
            witness_path=args.witness,
            unit=args.unit,
            now=now,
            store_url=args.store,
        )
        document = render(report, fmt, args.lang)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(document)
        if args.json:
            args.json.write_bytes(canonical_json(report.figures))
        if args.keep:
            row = store_report(
                store,
                report,
                fmt=fmt,
                lang=args.lang,
                document=document,
                now=now,
                path=args.out.resolve(),
            )
            print(f"stored as report #{row.id}")
    finally:
        store.close()
    verdict = report.meta["verification"]
    checked = "not verified" if not verdict["verified"] else ("OK" if verdict["ok"] else "FAILED")
    print(
        f"{report.kind} report {report.subject}: {args.out} ({len(document):,} bytes, {fmt}); "
        f"record {checked}; digest {report.digest}"
    )
    return 0


def _cmd_inspection(args: argparse.Namespace) -> int:
    return _emit(args, lambda store, **kw: build_inspection(store, args.period, **kw))


def _cmd_leaver(args: argparse.Namespace) -> int:
    return _emit(args, lambda store, **kw: build_leaver(store, args.user, period=args.period, **kw))


def _cmd_host(args: argparse.Namespace) -> int:
    return _emit(args, lambda store, **kw: build_host(store, args.host, args.period, **kw))


def _cmd_destruction(args: argparse.Namespace) -> int:
    return _emit(args, lambda store, **kw: build_destruction(store, args.period, **kw))


def _cmd_scheduled(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        rows = generate_due(
            store,
            args.out_dir,
            policies_dir=args.policies,
            verify_key_path=_key(args),
            witness_path=args.witness,
            unit=args.unit,
            lang=args.lang,
            store_url=args.store,
        )
    finally:
        store.close()
    for row in rows:
        print(f"#{row.id} {row.kind} {row.subject} {row.fmt}: {row.path}")
    if not rows:
        print("no scheduled report is due")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        rows = list_reports(store, args.kind)
    finally:
        store.close()
    for row in rows:
        when = dt.datetime.fromtimestamp(row.created_us / 1e6, dt.UTC).isoformat(timespec="seconds")
        doc = {
            "id": row.id,
            "kind": row.kind,
            "subject": row.subject,
            "format": row.fmt,
            "lang": row.lang,
            "created": when,
            "digest": row.digest,
            "bytes": row.size,
            "scheduled": row.scheduled,
            "path": row.path,
        }
        # json.dumps: subjects are login and host names, printed without terminal escapes.
        print(json.dumps(doc, ensure_ascii=False))
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        document = report_document(store, args.id)
    finally:
        store.close()
    if document is None:
        raise ReportError(f"no stored report #{args.id}: 'baomi-collector report list' shows them")
    args.out.write_bytes(document)
    print(f"report #{args.id}: {args.out} ({len(document):,} bytes)")
    return 0


def add_report_commands(
    sub: argparse._SubParsersAction[Any],
    with_store: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Add ``report`` and its subcommands to the collector's command line."""
    rep = sub.add_parser(
        "report", help="inspection, leaver, host and destruction reports (PDF, HTML)"
    )
    rep_sub = rep.add_subparsers(dest="report_command", required=True)

    def common(sp: argparse.ArgumentParser, *, out: bool = True) -> argparse.ArgumentParser:
        with_store(sp)
        if out:
            sp.add_argument("--out", type=Path, required=True, help="file to write")
            sp.add_argument(
                "--format", choices=FORMATS, help="pdf or html (default: from --out, else pdf)"
            )
            sp.add_argument("--json", type=Path, help="also write the digested figures as JSON")
            sp.add_argument(
                "--keep", action="store_true", help="also store the report for the console"
            )
        sp.add_argument("--lang", choices=LANGS, default="zh", help="zh (default) or en")
        sp.add_argument("--unit", default="", help="the organisation named on the cover")
        sp.add_argument(
            "--policies",
            type=Path,
            default=DEFAULT_POLICIES,
            help=f"policy directory with subjects.toml (default {DEFAULT_POLICIES})",
        )
        sp.add_argument(
            "--pki",
            type=Path,
            default=DEFAULT_PKI,
            help=f"collector PKI directory with signing.pub (default {DEFAULT_PKI})",
        )
        sp.add_argument(
            "--witness",
            type=Path,
            help="the collector's witness file (serve --witness): verify the record against it",
        )
        return sp

    ins = common(rep_sub.add_parser("inspection", help="periodic inspection report (定期检查)"))
    ins.add_argument("--period", required=True, help="2026, 2026-H2, 2026-Q4 or 2026-11")
    ins.set_defaults(func=_cmd_inspection)

    lv = common(rep_sub.add_parser("leaver", help="leaver review sheet (离职审查)"))
    lv.add_argument("--user", required=True, help="login name or uid")
    lv.add_argument("--period", help="limit to a period (default: the whole record)")
    lv.set_defaults(func=_cmd_leaver)

    ho = common(rep_sub.add_parser("host", help="one computer's inspection record"))
    ho.add_argument("--host", required=True, help="the host id the report is about")
    ho.add_argument("--period", required=True, help="2026, 2026-H2, 2026-Q4 or 2026-11")
    ho.set_defaults(func=_cmd_host)

    ds = common(rep_sub.add_parser("destruction", help="destruction register (销毁登记表)"))
    ds.add_argument("--period", required=True, help="2026, 2026-H2, 2026-Q4 or 2026-11")
    ds.set_defaults(func=_cmd_destruction)

    sch = common(
        rep_sub.add_parser("scheduled", help="make the due monthly and half-yearly reports"),
        out=False,
    )
    sch.add_argument(
        "--out-dir", type=Path, default=Path("var/reports"), help="where the reports are written"
    )
    sch.set_defaults(func=_cmd_scheduled)

    ls = with_store(rep_sub.add_parser("list", help="stored reports, newest first (JSON lines)"))
    ls.add_argument(
        "--kind",
        choices=("inspection", "leaver", "host", "destruction"),
        help="only reports of this kind",
    )
    ls.set_defaults(func=_cmd_list)

    get = with_store(rep_sub.add_parser("get", help="write a stored report's document"))
    get.add_argument("--id", type=int, required=True, help="the report's id ('report list')")
    get.add_argument("--out", type=Path, required=True, help="the file to write it to")
    get.set_defaults(func=_cmd_get)
