"""Collector settings (sysadmin): alert targets and the time zone pages use."""

from __future__ import annotations

from starlette.responses import Response

from collector.console.app import Ctx
from collector.console.errors import ConsoleError


async def settings(c: Ctx) -> Response:
    """Collector settings: alert targets and the time zone pages use."""
    return c.render("settings.html", s=c.console.settings, saved=False)


async def settings_save(c: Ctx) -> Response:
    """Check and store the settings, then apply them."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    from collector.console.alerts import SyslogTarget, check_webhook  # noqa: PLC0415

    hooks = [check_webhook(u) for u in (await c.field("webhooks", 4000)).splitlines() if u.strip()]
    syslog = (await c.field("syslog", 200)).strip()
    if syslog:
        SyslogTarget.parse(syslog)
    tz = (await c.field("timezone", 64)).strip() or "Asia/Shanghai"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConsoleError(f"unknown time zone {tz[:64]!r} (use e.g. Asia/Shanghai)") from e
    values = {"webhooks": "\n".join(hooks), "syslog": syslog, "timezone": tz}

    def save() -> None:
        for key, value in values.items():
            c.store.set_setting(key, value)

    await c.run(save)
    c.console.load_settings()
    # Webhook URLs may carry secrets in their query: the audit names hosts only.
    shown = ", ".join(u.split("/")[2] for u in hooks)
    await c.audit(
        "settings_change", "alerts", f"webhooks [{shown}], syslog {syslog or '-'}, tz {tz}"
    )
    return c.render("settings.html", s=c.console.settings, saved=True)
