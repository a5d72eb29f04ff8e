"""Meeting checks: pre-meeting checks and sweeps reported by room agents, with their
signatures."""

from __future__ import annotations

from baomi.v1 import events_pb2
from starlette.responses import Response

from collector import meeting_signatures
from collector.console.app import Ctx
from collector.console.eventview import format_time
from collector.store.base import ConsoleQuery

MEETING_EVENTS = 500


async def meetings(c: Ctx) -> Response:
    """Pre-meeting checks and sweeps reported by room agents."""
    rows = await c.run(
        c.store.console_events, ConsoleQuery(kind="meeting_check", limit=MEETING_EVENTS)
    )
    signatures = await c.run(meeting_signatures.lookup, c.store, rows)
    items = []
    for row in rows:
        m = events_pb2.Event.FromString(row.body).meeting_check
        failed = [i for i in m.items if i.result != "pass"]
        signature = signatures[(row.host_id, row.seq)]
        items.append((row, m, failed, format_time(row.event_time_us, c.console.tz), signature))
    return c.render("meetings.html", items=items)
