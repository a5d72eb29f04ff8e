"""Findings: violations followed to closure (secadmin edits, auditor reads)."""

from __future__ import annotations

import datetime as dt

from starlette.responses import RedirectResponse, Response

from collector.console.app import SEC, Ctx, form_id
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time, view
from collector.ingest import now_us
from collector.store.base import FindingRow

FINDING_STATUSES = ("open", "rectifying", "closed")


async def findings(c: Ctx) -> Response:
    """Violations followed to closure."""
    status = c.request.query_params.get("status", "")
    rows = await c.run(c.store.findings, status if status in FINDING_STATUSES else None)
    today = dt.datetime.now(c.console.tz).date().isoformat()
    return c.render(
        "findings.html",
        rows=[(f, format_time(f.updated_us, c.console.tz)) for f in rows],
        statuses=FINDING_STATUSES,
        status_filter=status,
        today=today,
        can_edit=c.user is not None and c.user.role == SEC,
    )


def _due(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise ConsoleError(f"due date {text[:20]!r} is not YYYY-MM-DD") from e


async def finding_create(c: Ctx) -> Response:
    """Make a finding of a violation event."""
    host = await c.field("host", 63)
    seq = form_id(await c.field("seq", 20), "event seq")
    row = await c.run(c.store.event, host, seq)
    if row is None:
        raise ConsoleError(c.t("not_found"))
    v = view(row)
    now = now_us()
    name = c.account.name
    finding = FindingRow(
        id=0,
        host_id=host,
        seq=row.seq,
        title=v.summary[:200],
        severity=row.severity,
        owner=(await c.field("owner", 100)).strip(),
        due=_due(await c.field("due", 20)),
        status="open",
        note=(await c.field("note", 2000)).strip(),
        created_us=now,
        created_by=name,
        updated_us=now,
        updated_by=name,
    )
    fid = await c.run(c.store.add_finding, finding)
    await c.audit("finding_create", f"finding {fid}", f"event {host}/{row.seq}")
    return RedirectResponse("/findings", status_code=303)


async def finding_update(c: Ctx) -> Response:
    """Change a finding's owner, due date, status or note."""
    fid = int(c.request.path_params["fid"])
    status = await c.field("status", 20)
    if status not in FINDING_STATUSES:
        raise ConsoleError(f"status must be one of {', '.join(FINDING_STATUSES)}")
    owner = (await c.field("owner", 100)).strip()
    due = _due(await c.field("due", 20))
    note = (await c.field("note", 2000)).strip()
    changed = await c.run(_update_finding, c, fid, owner=owner, due=due, status=status, note=note)
    if not changed:
        return c.error(404, c.t("not_found"))
    await c.audit("finding_update", f"finding {fid}", f"status {status}, owner {owner}, due {due}")
    return RedirectResponse("/findings", status_code=303)


def _update_finding(c: Ctx, fid: int, *, owner: str, due: str, status: str, note: str) -> bool:
    return bool(
        c.store.update_finding(
            fid, owner=owner, due=due, status=status, note=note, by=c.account.name, now_us=now_us()
        )
    )
