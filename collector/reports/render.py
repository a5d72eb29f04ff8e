"""Reports to documents: Jinja2 templates to HTML, WeasyPrint to PDF.

Every string from the record (device names, paths, reasons, findings) reaches the page
through Jinja2 autoescaping, so it is text, never markup; charts are ``data:`` images;
WeasyPrint may fetch nothing but ``data:`` URLs; and the HTML carries a Content Security
Policy that forbids script, so even a browser opening the file runs nothing from it.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any

import jinja2
from baomi import display

from collector.reports.common import Report, ReportError
from collector.reports.text import LANGS, label, translator

_logger = logging.getLogger(__name__)

FORMATS = ("pdf", "html")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("collector.reports", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,  # a misspelt figure fails the build, not the page
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=display.finalize,  # control and bidi characters shown as escapes
    )
    env.filters["num"] = _num
    env.filters["lines"] = display.Lines
    return env


def _num(value: object) -> str:
    """Thousands separators for ints; "—" for a missing figure."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _pct(pair: object) -> str:
    """``[numerator, denominator]`` as a percentage with one decimal."""
    if not isinstance(pair, list) or len(pair) != 2 or not pair[1]:
        return "—"
    return f"{100 * pair[0] / pair[1]:.1f}%"


def _duration(lang: str) -> Callable[[object], str]:
    def fmt(seconds: object) -> str:
        s = int(seconds) if isinstance(seconds, int) else 0
        days, rest = divmod(s, 86_400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        parts: list[tuple[int, str, str]] = [
            (days, "天", " d"),
            (hours, "小时", " h"),
            (minutes, "分", " min"),
        ]
        shown = [f"{n}{zh if lang == 'zh' else en}" for n, zh, en in parts if n]
        if not shown:
            return f"{secs}{'秒' if lang == 'zh' else ' s'}"
        return ("" if lang == "zh" else " ").join(shown[:2])

    return fmt


def _change(lang: str) -> Callable[[object, object], str]:
    t = translator(lang)

    def fmt(value: object, previous: object) -> str:
        if isinstance(value, list) and isinstance(previous, list):
            if not value[1] or not previous[1]:
                return "—"
            delta = 100 * value[0] / value[1] - 100 * previous[0] / previous[1]
            if abs(delta) < 0.05:  # below the one decimal printed
                return t("chg.same")
            return f"{delta:+.1f} pp" if lang == "en" else f"{delta:+.1f} 个百分点"
        if not isinstance(value, int) or not isinstance(previous, int):
            return "—"
        delta = value - previous
        if delta == 0:
            return t("chg.same")
        text = f"{delta:+,}"
        if previous:
            text += f" ({100 * delta / previous:+.1f}%)"
        return text

    return fmt


def _every_day(
    daily: list[list[Any]], start: str, end: str
) -> tuple[list[str], list[int], list[int]]:
    """Per-day rows ``[date, a, b]`` over every day of ``[start, end)``, zeros filled in,
    so the time axis is time and a quiet week shows as a quiet week."""
    first = dt.date.fromisoformat(start[:10])
    last = dt.date.fromisoformat(end[:10]) - dt.timedelta(days=1)
    known = {row[0]: row for row in daily}
    days, a, b = [], [], []
    day = first
    while day <= last:
        row = known.get(day.isoformat())
        days.append(day.isoformat())
        a.append(int(row[1]) if row else 0)
        b.append(int(row[2]) if row else 0)
        day += dt.timedelta(days=1)
    return days, a, b


def _charts(report: Report, lang: str) -> dict[str, str]:
    """The charts the template of ``report`` shows, as data: URIs."""
    from collector.reports import charts  # noqa: PLC0415 - matplotlib loads on first use

    t = translator(lang)
    f = report.figures
    out: dict[str, str] = {}
    if report.kind == "inspection":
        acc = f["access"]
        levels = acc["by_level"]
        if any(r["allowed"] or r["denied"] for r in levels):
            out["levels"] = charts.bar_chart(
                [label(lang, "level", r["level"]) for r in levels],
                [
                    (t("chart.allowed"), [r["allowed"] for r in levels], charts.ALLOWED),
                    (t("chart.denied"), [r["denied"] for r in levels], charts.DENIED),
                ],
                title=t("access.by_level"),
                stacked=True,
            )
        if acc["denials"]:
            out["denials"] = charts.bar_chart(
                [label(lang, "reason", r["reason"]) for r in acc["denials"]],
                [(t("chart.denied"), [r["count"] for r in acc["denials"]], charts.DENIED)],
                title=t("access.denials"),
                horizontal=True,
                height_in=0.35 * min(len(acc["denials"]), charts.MAX_BARS) + 0.9,
            )
        if acc["daily"]:
            days, allowed, denied = _every_day(acc["daily"], f["start"], f["end"])
            out["trend"] = charts.line_chart(
                days,
                [
                    (t("chart.accesses"), allowed, charts.ALLOWED),
                    (t("chart.denied"), denied, charts.DENIED),
                ],
                title=t("access.trend"),
            )
        dev = f["devices"]["blocked_by_class"]
        if dev:
            out["devices"] = charts.bar_chart(
                [label(lang, "class", r["class"]) for r in dev],
                [(t("decision.deny"), [r["count"] for r in dev], charts.DENIED)],
                title=t("dev.by_class"),
            )
        kinds = f["links"]["by_kind"]
        if kinds:
            out["links"] = charts.bar_chart(
                [label(lang, "link", r["kind"]) for r in kinds],
                [(t("links.total"), [r["count"] for r in kinds], charts.DENIED)],
                title=t("links.by_kind"),
                height_in=2.0,
            )
        items = f["meetings"]["failed_items"]
        if items:
            out["meetings"] = charts.bar_chart(
                [f"{r['id']} {r['title']}" for r in items],
                [(t("meet.failed_items"), [r["count"] for r in items], charts.DENIED)],
                title=t("meet.failed_items"),
                horizontal=True,
                height_in=0.35 * min(len(items), charts.MAX_BARS) + 0.9,
            )
    elif report.kind == "leaver":
        levels = f["by_level"]
        if any(r["files"] for r in levels):
            out["levels"] = charts.bar_chart(
                [label(lang, "level", r["level"]) for r in levels],
                [(t("lv.files"), [r["files"] for r in levels], charts.ALLOWED)],
                title=t("lv.files"),
                height_in=2.0,
            )
    elif report.kind == "host" and f["daily"]:
        days, events, denied = _every_day(f["daily"], f["start"], f["end"])
        out["activity"] = charts.line_chart(
            days,
            [
                (t("chart.events"), events, charts.ALLOWED),
                (t("chart.denied"), denied, charts.DENIED),
            ],
            title=t("hr.activity"),
        )
    return out


def render_html(report: Report, lang: str = "zh") -> str:
    """The report as one self-contained HTML document (styles and charts inline)."""
    if lang not in LANGS:
        raise ReportError(f"unknown language {lang!r}: use one of {', '.join(LANGS)}")
    template = _environment().get_template(f"{report.kind}.html.j2")
    drawn = report.charts.get(lang)
    if drawn is None:
        drawn = report.charts[lang] = _charts(report, lang)
    return template.render(
        r=report,
        f=report.figures,
        m=report.meta,
        lang=lang,
        t=translator(lang),
        lbl=functools.partial(label, lang),
        pct=_pct,
        dur=_duration(lang),
        change=_change(lang),
        charts=drawn,
    )


def render_pdf(report: Report, lang: str = "zh") -> bytes:
    """The report as PDF (A4), fonts embedded, via WeasyPrint."""
    import weasyprint  # noqa: PLC0415 - pango loads on use, not on every collector start

    html = render_html(report, lang)
    # data: URLs only: the document needs nothing else, and a string from the record
    # must never make the renderer open a file or a network connection.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})
    document = weasyprint.HTML(string=html, url_fetcher=fetcher, base_url=None)
    pdf: bytes = document.write_pdf()
    return pdf


def render(report: Report, fmt: str, lang: str = "zh") -> bytes:
    """The report in ``fmt`` (pdf or html) as bytes."""
    if fmt == "pdf":
        return render_pdf(report, lang)
    if fmt == "html":
        return render_html(report, lang).encode("utf-8")
    raise ReportError(f"unknown format {fmt!r}: use pdf or html")
