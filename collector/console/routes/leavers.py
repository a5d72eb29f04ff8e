"""Leaver handover (离职交还): the register items a leaver holds, closed, then signed off.

The secadmin closes each item (returned, or destroyed with its destruction record) and
signs the review off, which is refused while any item is still held; the auditor reads.
What "holds" means is collector/handover.py's.
"""

from __future__ import annotations

from urllib.parse import quote

from baomi.v1 import events_pb2
from starlette.responses import RedirectResponse, Response

from collector import handover
from collector.console.app import SEC, Ctx
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.register import RegisterError, RegisterService

LOGIN_CHARS = 64


def _service(c: Ctx) -> RegisterService:
    service = c.console.backend.register
    if service is None:
        raise ConsoleError("this collector keeps no register")
    return service


def _back(login: str) -> RedirectResponse:
    return RedirectResponse(f"/leavers?user={quote(login)}", status_code=303)


async def leavers_page(c: Ctx) -> Response:
    """One leaver's items with their handover state, and whether the review is signed off."""
    login = c.request.query_params.get("user", "").strip()[:LOGIN_CHARS]
    if not login:
        return c.render("leavers.html", login="", items=[], signed=None)
    register = _service(c).register
    items = await c.run(handover.items, c.store, register, login)
    signed = await c.run(handover.signed_off, c.store, login)
    return c.render(
        "leavers.html",
        login=login,
        items=items,
        held=sum(1 for i in items if i.state == "held"),
        signed=(signed[0], format_time(signed[1], c.console.tz)) if signed else None,
        can_edit=c.user is not None and c.user.role == SEC,
    )


async def leaver_close(c: Ctx) -> Response:
    """Record one item of a leaver returned, or destroyed (with its destruction record)."""
    login = (await c.field("user", LOGIN_CHARS)).strip()
    register_id = (await c.field("register_id", 128)).strip()
    how = (await c.field("how", 20)).strip()
    record = (await c.field("record", 200)).strip()
    service = _service(c)
    try:
        await handover.close_item(
            c.store,
            service.register,
            c.console.backend.chain,
            login=login,
            register_id=register_id,
            how=how,
            record=record,
            actor=c.account.name,
        )
    except RegisterError as e:
        await c.audit("leaver_close", handover.target(login), str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit("leaver_close", handover.target(login), f"{register_id} {how} {record}".strip())
    return _back(login)


async def leaver_signoff(c: Ctx) -> Response:
    """Sign the review off; refused while the leaver still holds any register item."""
    login = (await c.field("user", LOGIN_CHARS)).strip()
    if not login:
        raise ConsoleError("name the leaver (login name)")
    items = await c.run(handover.items, c.store, _service(c).register, login)
    try:
        handover.check_signoff(items)
    except RegisterError as e:
        await c.audit(handover.SIGNOFF, handover.target(login), str(e), ok=False)
        raise ConsoleError(str(e)) from e
    await c.audit(
        handover.SIGNOFF,
        handover.target(login),
        f"{len(items)} items returned or destroyed",
        severity=events_pb2.SEVERITY_MEDIUM,
    )
    return _back(login)
