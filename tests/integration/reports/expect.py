# The labels are the report's Chinese headings, full-width punctuation and all.
# ruff: noqa: RUF001
"""What the reports must print, computed from the seed's specs with plain arithmetic.

Nothing here imports the report code: these few lines restate each figure's definition
over the specs, so a mistake in the aggregation cannot hide in its own expectation.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from tests.integration.reports.seed import ALLOW, BEIJING, DENY, FINDINGS, Spec, us

H1 = (dt.datetime(2026, 1, 1, tzinfo=BEIJING), dt.datetime(2026, 7, 1, tzinfo=BEIJING))
H2 = (dt.datetime(2026, 7, 1, tzinfo=BEIJING), dt.datetime(2027, 1, 1, tzinfo=BEIJING))
AS_OF = "2026-12-31"

#: How the engine words denials, and the heading each group prints under (zh).
REASONS_ZH = {
    "training expired": "未培训或培训过期",
    "read up: clearance": "涉密等级低于文件密级",
    "status ": "离岗/离职人员",
    "unknown user": "未登记人员",
}


def within(spec: Spec, period: tuple[dt.datetime, dt.datetime]) -> bool:
    """Spec time in [start, end)."""
    return period[0] <= spec.time < period[1]


def count(spec: Spec) -> int:
    """Accesses an access event stands for."""
    return spec.fields["count"] or 1


def accesses(specs: list[Spec], period: tuple[dt.datetime, dt.datetime]) -> list[Spec]:
    """File accesses in the period."""
    return [s for s in specs if s.kind == "file_access" and within(s, period)]


def summary(specs: list[Spec], period: tuple[dt.datetime, dt.datetime]) -> dict[str, str]:
    """The summary table's column for ``period``, as printed."""
    acc = accesses(specs, period)
    checks = [
        s
        for s in specs
        if s.kind == "meeting_check" and within(s, period) and s.fields["phase"] == "check"
    ]
    cleared = sum(1 for s in checks if s.fields["cleared"])
    declassified = {
        (s.host, s.fields["path"], s.fields["label_id"])
        for s in specs
        if s.kind == "file_change" and within(s, period) and s.fields["change"] == "declassified"
    }
    start, end = (int(t.timestamp() * 1e6) for t in period)
    return {
        "有上报的涉密计算机（台）": str(len({s.host for s in specs if within(s, period)})),
        "涉密文件访问（次）": str(sum(count(s) for s in acc if s.fields["level"] >= 1)),
        "被拒绝的访问（次）": str(sum(count(s) for s in acc if s.fields["decision"] == DENY)),
        "被阻断的外接设备（次）": str(
            sum(
                1
                for s in specs
                if s.kind == "device"
                and within(s, period)
                and s.fields["action"] == "add"
                and s.fields["decision"] == DENY
            )
        ),
        "违规外联（次）": str(
            sum(
                1
                for s in specs
                if s.kind == "network" and within(s, period) and s.fields["violation"]
            )
        ),
        "会前检查（次）": str(len(checks)),
        "会前检查通过率": f"{100 * cleared / len(checks):.1f}%",
        "自行解密文件（个）": str(len(declassified)),
        "防护非正常中断（次）": str(
            sum(
                1
                for s in specs
                if s.kind == "tamper" and within(s, period) and s.fields["kind"] == "unclean_stop"
            )
        ),
        "新发现问题（项）": str(sum(1 for f in FINDINGS if start <= us(f[5]) < end)),
    }


def by_level(specs: list[Spec]) -> dict[int, tuple[int, int]]:
    """H2 accesses per level: (allowed, denied)."""
    out = {lv: [0, 0] for lv in range(4)}
    for s in accesses(specs, H2):
        out[s.fields["level"]][0 if s.fields["decision"] == ALLOW else 1] += count(s)
    return {lv: (a, d) for lv, (a, d) in out.items()}


def denials(specs: list[Spec]) -> Counter[str]:
    """H2 denied accesses by printed reason heading."""
    out: Counter[str] = Counter()
    for s in accesses(specs, H2):
        if s.fields["decision"] == DENY:
            heading = next(h for p, h in REASONS_ZH.items() if s.fields["reason"].startswith(p))
            out[heading] += count(s)
    return out


def user_levels(specs: list[Spec], user: str) -> list[int]:
    """H2 allowed accesses of ``user`` to 绝密, 机密, 秘密, and their denials."""
    acc = [s for s in accesses(specs, H2) if s.fields["user"] == user]
    levels = [
        sum(count(s) for s in acc if s.fields["level"] == lv and s.fields["decision"] == ALLOW)
        for lv in (3, 2, 1)
    ]
    return [*levels, sum(count(s) for s in acc if s.fields["decision"] == DENY)]


def findings_figures() -> dict[str, int]:
    """The findings key figures for H2, as of its last day."""
    start, end = (int(t.timestamp() * 1e6) for t in H2)
    keys = ("title", "host", "owner", "due", "status", "created", "updated")
    rows = [dict(zip(keys, f, strict=True)) for f in FINDINGS]
    return {
        "未关闭": sum(1 for f in rows if f["status"] == "open"),
        "整改中": sum(1 for f in rows if f["status"] == "rectifying"),
        "已关闭": sum(1 for f in rows if f["status"] == "closed"),
        "已逾期": sum(1 for f in rows if f["status"] != "closed" and f["due"] < AS_OF),
        "本期新增": sum(1 for f in rows if start <= us(f["created"]) < end),
        "本期关闭": sum(
            1 for f in rows if f["status"] == "closed" and start <= us(f["updated"]) < end
        ),
    }
