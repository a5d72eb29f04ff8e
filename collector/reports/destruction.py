"""The destruction register (销毁登记表) of a period: every file destroyed under an order.

One row per ``file_change`` of change ``destroyed`` recorded in the period (see
collector/destruction.py): date, register id, title, level, host, home path, content
hash (SHA-256), order, the person who destroyed it and the secadmin who ordered it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from collector.destruction import destructions
from collector.register import Register
from collector.reports.common import (
    FORMAT_VERSION,
    Report,
    Verification,
    iso_local,
    local_time,
)
from collector.reports.period import Period, parse_period
from collector.store.base import Store


def build_destruction(
    store: Store,
    period: str | Period,
    *,
    policies_dir: Path = Path("policies"),  # the builders' common signature: unused here
    verify_key_path: Path | None = None,
    witness_path: Path | None = None,
    unit: str = "",
    now: dt.datetime | None = None,
    store_url: str | None = None,
) -> Report:
    """The destructions recorded in ``period``, oldest first."""
    p = parse_period(period) if isinstance(period, str) else period
    now = now or dt.datetime.now(dt.UTC)
    verifying = Verification(store, verify_key_path, store_url, witness_path)
    register = Register.load(store)
    rows = [
        {
            "time": local_time(d.time_us),
            "register_id": d.register_id,
            "title": d.title,
            "level": d.level,
            "host": d.host,
            "home": d.home or d.path,
            "sha256": d.content_hash,
            "order": d.order_id,
            "person": d.person,
            "approver": d.approver,
            "record": d.ref,
        }
        for d in destructions(store, register, p.start_us, p.end_us)
    ]
    figures = {
        "format": FORMAT_VERSION,
        "unit": unit,
        "period": p.name,
        "start": iso_local(p.start),
        "end": iso_local(p.end),
        "rows": rows,
    }
    meta = {
        "generated_at": iso_local(now),
        "verification": verifying.result(),
        "period_label": {lang: p.label(lang) for lang in ("zh", "en")},
    }
    return Report("destruction", p.name, figures, meta)
