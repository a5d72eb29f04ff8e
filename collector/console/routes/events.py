"""Events: the filtered list (following new events live), the live stream, one event in
full, and the auditor's CSV export."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from urllib.parse import urlencode

from starlette.responses import Response, StreamingResponse

from collector.console import eventview
from collector.console.app import AUD, SEC, Ctx, current_user
from collector.console.errors import ConsoleError
from collector.console.eventview import Filters, format_time, search, view
from collector.console.exports import events_csv

EXPORT_EVENTS = 50_000  # rows in one CSV export
EXPORT_SCAN = 500_000  # rows an export with a user/path filter examines at most
KEEPALIVE_SECONDS = 15.0  # SSE comment lines keep proxies from closing an idle stream


def _hidden(c: Ctx) -> tuple[str, ...]:
    """Event kinds the user's role may not see: the console's own audit trail is the
    auditor's (the administrators it audits do not read it)."""
    return () if c.user is not None and c.user.role == AUD else ("console_action",)


def _cursor(text: str) -> tuple[int, str, int] | None:
    """``before`` of a page link: "TIME_SEQ_HOST"."""
    if not text:
        return None
    damaged = ConsoleError("the page link is damaged; start from the first page")
    try:
        t, seq, host = text.split("_", 2)
        cursor = int(t), host, int(seq)
    except ValueError as e:
        raise damaged from e
    # Every real cursor fits the stores' signed 64-bit columns and PostgreSQL text.
    if not all(-(2**63) <= n < 2**63 for n in (cursor[0], cursor[2])) or "\x00" in host:
        raise damaged
    return cursor


def _cursor_text(cursor: tuple[int, str, int]) -> str:
    return f"{cursor[0]}_{cursor[2]}_{cursor[1]}"


async def events(c: Ctx) -> Response:
    """Events newest first with filters; the first page follows new events live."""
    params = c.request.query_params
    filters = Filters.of(params, hidden=_hidden(c))
    before = _cursor(params.get("before", ""))
    page = await c.run(search, c.store, filters, c.console.tz, before=before)
    older = (
        "/events?" + urlencode({**filters.params(), "before": _cursor_text(page.next_before)})
        if page.next_before
        else ""
    )
    return c.render(
        "events.html",
        filters=filters,
        page=page,
        rows=[(v, format_time(v.row.event_time_us, c.console.tz)) for v in page.events],
        older=older,
        live=before is None,
        query=urlencode(filters.params()),
        kinds=[k for k in eventview.KINDS if k not in filters.hidden],
        severities=list(eventview.SEVERITY_BY_NAME),
        can_export=c.user is not None and c.user.role == AUD,
    )


def accepts(filters: Filters, v: eventview.EventView, since: int | None, until: int | None) -> bool:
    """Whether a live event passes the view's filters (what the store query would check)."""
    r = v.row
    return (
        (not filters.host or r.host_id == filters.host)
        and (not filters.kind or r.kind == filters.kind)
        and (not filters.severity or r.severity >= eventview.SEVERITY_BY_NAME[filters.severity])
        and (since is None or r.event_time_us >= since)
        and (until is None or r.event_time_us < until)
        and filters.matches(v)
    )


async def events_stream(c: Ctx) -> Response:
    """Server-sent events: each new event matching the filters, as JSON."""
    filters = Filters.of(c.request.query_params, hidden=_hidden(c))
    tz = c.console.tz
    q = filters.query(tz, limit=1, before=None)
    feed = c.console.feed
    console, request = c.console, c.request

    async def stream() -> object:
        sub = feed.subscribe()
        try:
            yield "retry: 2000\n\n"
            while not feed.closing.is_set():
                try:
                    v = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    if await current_user(console, request) is None:
                        yield "event: ended\ndata: {}\n\n"
                        return
                    yield ": keepalive\n\n"
                    continue
                if sub.overflowed:
                    yield "event: reload\ndata: {}\n\n"
                    return
                if accepts(filters, v, q.since_us, q.until_us):
                    row = v.brief(tz)
                    row["kind_label"] = c.t(f"kind_{v.kind}")
                    row["severity_label"] = c.t(f"severity_{v.severity}")
                    yield f"data: {json.dumps(row, ensure_ascii=False)}\n\n"
        finally:
            feed.unsubscribe(sub)

    return StreamingResponse(
        stream(),  # type: ignore[arg-type]
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


async def events_export(c: Ctx) -> Response:
    """The filtered events as CSV (audited)."""
    filters = Filters.of(c.request.query_params)
    tz = c.console.tz
    page = await c.run(search, c.store, filters, tz, limit=EXPORT_EVENTS, scan_rows=EXPORT_SCAN)
    await c.audit(
        "export",
        "events.csv",
        f"{len(page.events)} events; filters {json.dumps(filters.params(), ensure_ascii=False)}",
    )
    body = await c.run(events_csv, page.events, tz)
    stamp = dt.datetime.now(tz).strftime("%Y%m%d-%H%M%S")
    return Response(
        body.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="baomi-events-{stamp}.csv"'},
    )


async def event_detail(c: Ctx) -> Response:
    """One event in full (the view is audited)."""
    host = str(c.request.path_params["host"])
    seq = int(c.request.path_params["seq"])
    # No host id holds a NUL (and PostgreSQL text cannot): no such event.
    row = await c.run(c.store.event, host, seq) if "\x00" not in host else None
    if row is None:
        return c.error(404, c.t("not_found"))
    if row.kind in _hidden(c):
        await c.audit("forbidden", f"GET {c.request.url.path}", ok=False)
        return c.error(403, c.t("forbidden"))
    await c.audit("view_event", f"{host}/{seq}", row.kind)
    v = view(row)
    findings = [f for f in await c.run(c.store.findings) if (f.host_id, f.seq) == (host, seq)]
    return c.render(
        "event.html",
        v=v,
        when=format_time(row.event_time_us, c.console.tz),
        received=format_time(row.received_us, c.console.tz),
        body=json.dumps(v.as_dict(), ensure_ascii=False, indent=2),
        findings=findings,
        can_find=c.user is not None and c.user.role == SEC,
        violation=row.severity >= eventview.VIOLATION,
    )
