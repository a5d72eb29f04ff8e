"""The console's audit log (auditor): console actions from the collector's chain, and
verifying the whole record."""

from __future__ import annotations

from urllib.parse import urlencode

from baomi.v1 import events_pb2
from starlette.responses import Response

from collector import audit as record_audit
from collector import pki
from collector.console.app import Ctx
from collector.console.eventview import Filters, format_time, search
from collector.console.routes.events import _cursor, _cursor_text
from collector.ingest import COLLECTOR_HOST

AUDIT_EVENTS = 200


async def audit_page(c: Ctx, result: record_audit.AuditReport | None = None) -> Response:
    """The console's own actions from the collector's chain."""
    params = c.request.query_params
    filters = Filters(
        host=COLLECTOR_HOST, kind="console_action", user=params.get("actor", "").strip()[:200]
    )
    before = _cursor(params.get("before", ""))
    page = await c.run(search, c.store, filters, c.console.tz, limit=AUDIT_EVENTS, before=before)
    older = (
        "/audit?" + urlencode({"actor": filters.user, "before": _cursor_text(page.next_before)})
        if page.next_before
        else ""
    )
    return c.render(
        "audit.html",
        rows=[
            (v, v.event.console_action, format_time(v.row.event_time_us, c.console.tz))
            for v in page.events
        ],
        actor=filters.user,
        older=older,
        result=result,
    )


async def audit_log(c: Ctx) -> Response:
    """GET /audit."""
    return await audit_page(c)


async def audit_verify(c: Ctx) -> Response:
    """Recompute every chain and checkpoint (collector.audit.verify), against the
    collector's witness file too when it keeps one."""
    backend = c.console.backend
    key = pki.load_verify_key(backend.verify_key)
    report = await c.run(record_audit.verify_witnessed, c.store, key, backend.witness)
    await c.audit(
        "verify_chain",
        "record",
        f"{'OK' if report.ok else 'FAILED'}: {report.hosts} hosts, {report.events} events, "
        f"{len(report.damage)} problems",
        severity=events_pb2.SEVERITY_INFO if report.ok else events_pb2.SEVERITY_HIGH,
    )
    return await audit_page(c, report)
