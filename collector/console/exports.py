"""CSV export that a spreadsheet cannot be tricked into running.

A cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return is read as a
formula by Excel, LibreOffice and Google Sheets (OWASP "CSV injection"); such a cell is
prefixed with a single quote, which makes it text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from zoneinfo import ZoneInfo

from baomi import display

from collector.console.eventview import EventView, format_time

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = ("time", "host", "seq", "severity", "kind", "user", "paths", "summary", "hash")


def cell(value: object) -> str:
    """``value`` as a CSV cell that is never a formula, its control and bidi characters
    shown as escapes (:func:`baomi.display.escape`)."""
    text = display.escape(str(value))
    return "'" + text if text.startswith(FORMULA_START) else text


def events_csv(events: Iterable[EventView], tz: ZoneInfo) -> str:
    """The events as CSV (with a BOM so spreadsheets read the UTF-8 as UTF-8)."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for v in events:
        writer.writerow(
            [
                cell(x)
                for x in (
                    format_time(v.row.event_time_us, tz),
                    v.row.host_id,
                    v.row.seq,
                    v.severity,
                    v.kind,
                    v.user,
                    " | ".join(v.paths),
                    v.summary,
                    v.row.hash.hex(),
                )
            ]
        )
    return out.getvalue()
