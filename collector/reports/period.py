"""Report periods: a year, a half-year, a quarter or a month, in the unit's local time.

Secrecy committees review calendar periods (上半年/下半年, 第四季度, 11月), so a period is
named the way they name it — ``2026``, ``2026-H2``, ``2026-Q4``, ``2026-11`` — and
covers whole local days. Local time is Beijing time (UTC+8, no daylight saving) unless a
caller says otherwise; event times are compared in microseconds since the epoch.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from collector.errors import ConfigError

#: China Standard Time. A fixed offset, not a zoneinfo name: China has had no daylight
#: saving since 1991, and a fixed offset needs no tz database on the collector host.
CHINA_TZ = dt.timezone(dt.timedelta(hours=8), "UTC+8")

_PERIOD_RE = re.compile(r"(\d{4})(?:-(?:H([12])|Q([1-4])|(\d{2})))?")


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period ``[start, end)`` in local time."""

    name: str  # canonical: 2026, 2026-H2, 2026-Q4, 2026-11
    kind: str  # year, half, quarter, month
    year: int
    index: int  # half 1-2, quarter 1-4, month 1-12; 0 for a year
    tz: dt.tzinfo = CHINA_TZ

    @property
    def first_month(self) -> int:
        """The first calendar month of the period."""
        return {
            "year": 1,
            "half": 6 * (self.index - 1) + 1,
            "quarter": 3 * (self.index - 1) + 1,
        }.get(self.kind, self.index)

    @property
    def months(self) -> int:
        """How many months the period spans."""
        return {"year": 12, "half": 6, "quarter": 3, "month": 1}[self.kind]

    @property
    def start(self) -> dt.datetime:
        """The first instant of the period (local midnight)."""
        return dt.datetime(self.year, self.first_month, 1, tzinfo=self.tz)

    @property
    def end(self) -> dt.datetime:
        """The first instant after the period."""
        month = self.first_month + self.months
        year = self.year + (month - 1) // 12
        return dt.datetime(year, (month - 1) % 12 + 1, 1, tzinfo=self.tz)

    @property
    def start_us(self) -> int:
        """``start`` in microseconds since the epoch."""
        return to_us(self.start)

    @property
    def end_us(self) -> int:
        """``end`` in microseconds since the epoch (exclusive)."""
        return to_us(self.end)

    @property
    def last_day(self) -> dt.date:
        """The last local day inside the period."""
        return (self.end - dt.timedelta(days=1)).date()

    def previous(self) -> Period:
        """The period of the same length just before this one."""
        if self.kind == "year":
            return Period(str(self.year - 1), "year", self.year - 1, 0, self.tz)
        per_year = 12 // self.months
        year, index = (self.year, self.index - 1) if self.index > 1 else (self.year - 1, per_year)
        return _make(self.kind, year, index, self.tz)

    def contains(self, when_us: int) -> bool:
        """True when ``when_us`` lies in ``[start, end)``."""
        return self.start_us <= when_us < self.end_us

    def label(self, lang: str) -> str:
        """The period as a heading names it (``2026年下半年``, ``second half of 2026``)."""
        return (_ZH_LABELS if lang == "zh" else _EN_LABELS)[self.kind](self)


_ZH_LABELS: dict[str, Callable[[Period], str]] = {
    "year": lambda p: f"{p.year}年度",
    "half": lambda p: f"{p.year}年{'上半年' if p.index == 1 else '下半年'}",
    "quarter": lambda p: f"{p.year}年第{'一二三四'[p.index - 1]}季度",
    "month": lambda p: f"{p.year}年{p.index}月",
}
_EN_LABELS: dict[str, Callable[[Period], str]] = {
    "year": lambda p: f"year {p.year}",
    "half": lambda p: f"{'first' if p.index == 1 else 'second'} half of {p.year}",
    "quarter": lambda p: f"Q{p.index} {p.year}",
    "month": lambda p: dt.date(p.year, p.index, 1).strftime("%B %Y"),
}


def _make(kind: str, year: int, index: int, tz: dt.tzinfo) -> Period:
    name = {
        "year": f"{year}",
        "half": f"{year}-H{index}",
        "quarter": f"{year}-Q{index}",
        "month": f"{year}-{index:02d}",
    }[kind]
    return Period(name, kind, year, index, tz)


def parse_period(text: str, tz: dt.tzinfo = CHINA_TZ) -> Period:
    """``2026``, ``2026-H2``, ``2026-Q4`` or ``2026-11`` as a Period."""
    m = _PERIOD_RE.fullmatch(text.strip())
    if m is None or not 1970 <= int(m.group(1)) <= 9998:
        raise ConfigError(
            f"cannot read period {text!r}: use a year (2026), a half-year (2026-H2), "
            "a quarter (2026-Q4) or a month (2026-11)"
        )
    year = int(m.group(1))
    half, quarter, month = m.group(2), m.group(3), m.group(4)
    if half:
        return _make("half", year, int(half), tz)
    if quarter:
        return _make("quarter", year, int(quarter), tz)
    if month:
        if not 1 <= int(month) <= 12:
            raise ConfigError(
                f"cannot read period {text!r}: month {month} is not 01-12 "
                "(periods look like 2026, 2026-H2, 2026-Q4 or 2026-11)"
            )
        return _make("month", year, int(month), tz)
    return _make("year", year, 0, tz)


def last_complete(kind: str, now: dt.datetime, tz: dt.tzinfo = CHINA_TZ) -> Period:
    """The most recent period of ``kind`` (month, half, quarter, year) that ended by ``now``."""
    local = now.astimezone(tz)
    if kind == "year":
        return _make("year", local.year - 1, 0, tz)
    months = {"half": 6, "quarter": 3, "month": 1}[kind]
    current = _make(kind, local.year, (local.month - 1) // months + 1, tz)
    return current.previous()


def to_us(when: dt.datetime) -> int:
    """An aware datetime in microseconds since the epoch, exactly (no float rounding)."""
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(when_us: int, tz: dt.tzinfo = CHINA_TZ) -> dt.datetime:
    """Microseconds since the epoch as an aware datetime in ``tz``."""
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=when_us)).astimezone(
        tz
    )
