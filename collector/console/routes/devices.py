"""USB devices (secadmin): every device seen, the decision in force for it, and
approving a registered stick as a new policy version."""

from __future__ import annotations

import datetime as dt

from baomi.v1 import events_pb2
from starlette.responses import RedirectResponse, Response

from collector.console import devices
from collector.console.app import Ctx, form_id
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.console.routes.policy import current_files, publish


async def devices_page(c: Ctx) -> Response:
    """USB devices seen on any host, with the decision reported and the one in force."""
    seen = await c.run(devices.inventory, c.store)
    files = current_files(c)
    return c.render(
        "devices.html",
        no_policy=not _has_policy(files),
        rows=[
            (d, format_time(d.last_us, c.console.tz), devices.decide_now(files, d), sorted(d.hosts))
            for d in seen
        ],
        levels=devices.LEVELS,
    )


def _has_policy(files: dict[str, bytes]) -> bool:
    """Whether a policy is in force to add an approval to (the collector was started
    with --policies, or one was saved in the console)."""
    return "model.conf" in files


async def device_approve(c: Ctx) -> Response:
    """Register a stick: allow rule and registry entry, published to every agent."""
    if not _has_policy(current_files(c)):
        raise ConsoleError(c.t("approve_needs_policy"))
    host = await c.field("host", 63)
    seq = form_id(await c.field("seq", 20), "event seq")
    row = await c.run(c.store.event, host, seq)
    if row is None or row.kind != "device":
        raise ConsoleError(c.t("not_found"))
    device = events_pb2.Event.FromString(row.body).device
    files = devices.approve(
        current_files(c),
        device,
        label=(await c.field("label", 40)).strip(),
        owner=(await c.field("owner", 40)).strip(),
        level=await c.field("level", 10),
        actor=c.account.name,
        seen_on=host,
        when=dt.datetime.now(c.console.tz),
    )
    target = f"{device.vendor_id}:{device.product_id} serial {device.serial[:64]!r}"
    result = await publish(
        c,
        files,
        note=f"approve USB stick {target} seen on {host}",
        action="approve_device",
        target=target,
    )
    if isinstance(result, list):
        return c.error(422, "; ".join(map(str, result)))
    return RedirectResponse("/devices", status_code=303)
