"""The classification register (定密台账): entries, requests, approvals, drift.

The secadmin makes requests and approves or rejects them; the auditor reads. Every
decision is a register step in the collector's chain (collector/register.py) and a
console action in the audit log.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from baomi.v1 import events_pb2
from starlette.responses import RedirectResponse, Response

from collector.console.app import SEC, Ctx
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.destruction import request_destruction
from collector.register import (
    ACTIONS,
    IN_FORCE,
    RegisterError,
    RegisterService,
    parse_level,
    parse_scope,
)

FIELD_CHARS = 500  # title, basis, path and the like


def _service(c: Ctx) -> RegisterService:
    service = c.console.backend.register
    if service is None:
        raise ConsoleError("this collector keeps no register")
    return service


async def register_page(c: Ctx) -> Response:
    """The register, the requests waiting for a decision, and each host's drift."""
    service = _service(c)
    status = c.request.query_params.get("status", "")
    entries = service.register.listing(status or None)
    tz = c.console.tz
    return c.render(
        "register.html",
        entries=[(e, format_time(e.updated_us, tz)) for e in entries],
        pending=[e for e in service.register.listing() if e.pending is not None],
        drift=service.host_drift(),
        status_filter=status,
        today=dt.datetime.now(tz).date().isoformat(),
        actions=ACTIONS,
        can_edit=c.user is not None and c.user.role == SEC,
    )


async def register_entry(c: Ctx) -> Response:
    """One entry with its history; without an id, a form to look one up."""
    register_id = c.request.query_params.get("id", "").strip()
    if not register_id:
        return c.render("register_entry.html", entry=None, history=[])
    entry = _service(c).register.entries.get(register_id)
    if entry is None:
        return c.error(404, c.t("register_not_found"))
    tz = c.console.tz
    return c.render(
        "register_entry.html",
        entry=entry,
        history=[(h, format_time(h.time_us, tz)) for h in entry.history],
        can_destroy=c.user is not None
        and c.user.role == SEC
        and entry.status in IN_FORCE
        and entry.pending is None
        and entry.order is None,
    )


async def register_request(c: Ctx) -> Response:
    """Record a request made in the console."""
    action = await c.field("action", 20)
    target = f"{(await c.field('host', 63)).strip()}:{(await c.field('path', 4096)).strip()}"
    try:
        level = await c.field("level", 20)
        request = events_pb2.LabelRequest(
            action=action,
            host=(await c.field("host", 63)).strip(),
            path=(await c.field("path", 4096)).strip(),
            register_id=(await c.field("register_id", 128)).strip(),
            level=parse_level(level) if level.strip() else 0,  # type: ignore[arg-type]
            until=(await c.field("until", 20)).strip(),
            scope=parse_scope(await c.field("scope", 4096)),
            basis=(await c.field("basis", FIELD_CHARS)).strip(),
            title=(await c.field("title", FIELD_CHARS)).strip(),
            responsible=(await c.field("responsible", 100)).strip(),
            requester=c.account.name,
        )
        register_id = await _service(c).request(request, actor=c.account.name)
    except RegisterError as e:
        await c.audit("register_request", target, str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit(
        "register_request",
        f"register {register_id}",
        f"{action} {request.host}:{request.path} level {request.level}",
    )
    return RedirectResponse("/register", status_code=303)


async def register_approve(c: Ctx) -> Response:
    """Approve the pending request of an entry: the collector signs a label order."""
    register_id = (await c.field("register_id", 128)).strip()
    try:
        order_id = await _service(c).approve(register_id, actor=c.account.name)
    except RegisterError as e:
        await c.audit("register_approve", f"register {register_id}", str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit(
        "register_approve",
        f"register {register_id}",
        f"order {order_id}",
        severity=events_pb2.SEVERITY_MEDIUM,
    )
    return RedirectResponse("/register", status_code=303)


async def register_reject(c: Ctx) -> Response:
    """Reject the pending request of an entry, with the reason."""
    register_id = (await c.field("register_id", 128)).strip()
    reason = await c.field("reason", 1000)
    try:
        await _service(c).reject(register_id, actor=c.account.name, reason=reason)
    except RegisterError as e:
        await c.audit("register_reject", f"register {register_id}", str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit("register_reject", f"register {register_id}", reason.strip()[:500])
    return RedirectResponse("/register", status_code=303)


async def register_destroy(c: Ctx) -> Response:
    """Ask for an entry's destruction by a named person; approved like any request."""
    register_id = (await c.field("register_id", 128)).strip()
    person = (await c.field("person", 100)).strip()
    try:
        await request_destruction(_service(c), register_id, person=person, actor=c.account.name)
    except RegisterError as e:
        await c.audit("register_destroy", f"register {register_id}", str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit(
        "register_destroy",
        f"register {register_id}",
        f"destroy by {person}",
        severity=events_pb2.SEVERITY_MEDIUM,
    )
    return RedirectResponse(f"/register/entry?id={quote(register_id)}", status_code=303)
