"""The overview: hosts by state, policy drift, and (for the security roles) violations
by day and open findings."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from baomi.v1 import events_pb2
from starlette.responses import Response

from collector.console import eventview, svg
from collector.console.app import AUD, SEC, Ctx
from collector.console.routes.hosts import host_rows

CHART_DAYS = 14


def _violation_chart(c: Ctx) -> object:
    tz = c.console.tz
    today = dt.datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=CHART_DAYS - 1)
    since_us = int(start.timestamp() * 1_000_000)
    day_us = 86_400 * 1_000_000
    counts = c.store.severity_counts(since_us, day_us, eventview.VIOLATION)
    labels = [(start + dt.timedelta(days=i)).strftime("%m-%d") for i in range(CHART_DAYS)]
    series = []
    for severity in (
        events_pb2.SEVERITY_MEDIUM,
        events_pb2.SEVERITY_HIGH,
        events_pb2.SEVERITY_CRITICAL,
    ):
        values = [0] * CHART_DAYS
        for bucket, sev, n in counts:
            day = (bucket - since_us) // day_us
            if sev == severity and 0 <= day < CHART_DAYS:
                values[day] += n
        name = eventview.severity_name(severity)
        series.append((name, c.t(f"severity_{name}"), values))
    return svg.stacked_bars(labels, series, title=c.t("violations_chart", days=CHART_DAYS))


async def overview(c: Ctx) -> Response:
    """Hosts online and offline; violations by severity (security roles)."""
    rows = host_rows(c.console)
    states = Counter(r.state for r in rows)
    chart = None
    open_findings = 0
    role = c.user.role if c.user else ""
    if role in (SEC, AUD):
        chart = await c.run(_violation_chart, c)
        findings = await c.run(c.store.findings)
        open_findings = sum(1 for f in findings if f.status != "closed")
    current = c.console.backend.policy.current
    return c.render(
        "overview.html",
        states=states,
        hosts=len(rows),
        drift=sum(1 for r in rows if r.drift and r.state != "decommissioned"),
        chart=chart,
        open_findings=open_findings,
        policy=current.version if current else "",
    )
