"""Periodic inspection (定期检查), leaver review (离职审查) and host inspection reports.

Figures come from one streaming pass over the tamper-evident record; Jinja2 templates
make HTML, WeasyPrint makes PDF with the Noto CJK fonts embedded, matplotlib draws the
charts as SVG. Every report carries a SHA-256 digest of its figures on every page.
"""

from __future__ import annotations

from collector.reports.common import Report, ReportError, content_digest
from collector.reports.destruction import build_destruction
from collector.reports.host import build_host
from collector.reports.inspection import build_inspection
from collector.reports.leaver import build_leaver
from collector.reports.period import Period, parse_period
from collector.reports.render import FORMATS, render, render_html, render_pdf
from collector.reports.schedule import (
    ScheduleConfig,
    generate_due,
    list_reports,
    report_document,
    run_scheduler,
)

__all__ = [
    "FORMATS",
    "Period",
    "Report",
    "ReportError",
    "ScheduleConfig",
    "build_destruction",
    "build_host",
    "build_inspection",
    "build_leaver",
    "content_digest",
    "generate_due",
    "list_reports",
    "parse_period",
    "render",
    "render_html",
    "render_pdf",
    "report_document",
    "run_scheduler",
]
