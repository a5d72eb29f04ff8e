"""Inspection reports (auditor): the stored ones, downloading one, generating one now."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote

from starlette.responses import Response

from collector.console.app import Ctx
from collector.console.eventview import format_time
from collector.errors import CollectorError

REPORT_FORMATS = ("pdf", "html")
REPORT_KINDS = ("inspection", "destruction")  # made for a period on request


async def reports_page(c: Ctx, error: str = "", status: int = 200) -> Response:
    """Generated inspection reports (scheduled and on request) and a form for a new one."""
    from collector.reports import list_reports  # noqa: PLC0415 - the PDF stack on use

    rows = await c.run(list_reports, c.store)
    return c.render(
        "reports.html",
        status=status,
        rows=[(r, format_time(r.created_us, c.console.tz)) for r in rows],
        formats=REPORT_FORMATS,
        kinds=REPORT_KINDS,
        error=error,
    )


async def reports(c: Ctx) -> Response:
    """GET /reports."""
    return await reports_page(c)


async def report_download(c: Ctx) -> Response:
    """One stored report's document (an export: audited)."""
    from collector.reports import list_reports, report_document  # noqa: PLC0415

    rid = int(c.request.path_params["rid"])
    row = next((r for r in await c.run(list_reports, c.store) if r.id == rid), None)
    document = await c.run(report_document, c.store, rid) if row is not None else None
    if row is None or document is None:
        return c.error(404, c.t("not_found"))
    await c.audit("export", f"report {rid}", f"{row.kind} {row.subject} {row.fmt} {row.digest}")
    media = "application/pdf" if row.fmt == "pdf" else "text/html; charset=utf-8"
    name = f"baomi-{row.kind}-{row.subject}-{rid}.{row.fmt}".replace("/", "_")
    return Response(
        document,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{quote(name)}"'},
    )


async def report_generate(c: Ctx) -> Response:
    """Build an inspection or destruction report for a period now, keep it, and list it."""
    from collector.reports import build_destruction, build_inspection, render  # noqa: PLC0415
    from collector.reports.schedule import store_report  # noqa: PLC0415

    period = (await c.field("period", 20)).strip()
    fmt = await c.field("format", 8)
    kind = (await c.field("kind", 20)) or "inspection"
    lang = "en" if c.lang == "en" else "zh"
    if fmt not in REPORT_FORMATS or kind not in REPORT_KINDS:
        await c.audit("report_generate", period, f"{kind!r} {fmt!r} refused", ok=False)
        bad = "report_format_bad" if fmt not in REPORT_FORMATS else "report_kind_bad"
        return await reports_page(c, c.t(bad), 400)
    build = build_destruction if kind == "destruction" else build_inspection
    backend = c.console.backend
    now = dt.datetime.now(dt.UTC)

    def make() -> tuple[str, int]:
        report = build(
            c.store,
            period,
            policies_dir=backend.policies_dir or Path("policies"),
            verify_key_path=backend.verify_key,
            witness_path=backend.witness,
            now=now,
        )
        document = render(report, fmt, lang)
        row = store_report(c.store, report, fmt=fmt, lang=lang, document=document, now=now)
        return report.digest, row.id

    try:
        digest, rid = await c.run(make)
    except CollectorError as e:  # a bad period, an unreadable policy directory, ...
        await c.audit("report_generate", period[:20], str(e)[:300], ok=False)
        return await reports_page(c, str(e), 400)
    await c.audit("report_generate", f"report {rid}", f"{kind} {period} {fmt} {digest}")
    return await reports_page(c)
