"""Report periods: names, bounds in Beijing time, the previous period."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.errors import ConfigError
from collector.reports.period import CHINA_TZ, last_complete, parse_period

BEIJING = dt.timezone(dt.timedelta(hours=8))


@pytest.mark.parametrize(
    ("name", "start", "end", "previous"),
    [
        ("2026", (2026, 1), (2027, 1), "2025"),
        ("2026-H1", (2026, 1), (2026, 7), "2025-H2"),
        ("2026-H2", (2026, 7), (2027, 1), "2026-H1"),
        ("2026-Q1", (2026, 1), (2026, 4), "2025-Q4"),
        ("2026-Q4", (2026, 10), (2027, 1), "2026-Q3"),
        ("2026-01", (2026, 1), (2026, 2), "2025-12"),
        ("2026-11", (2026, 11), (2026, 12), "2026-10"),
        ("2026-12", (2026, 12), (2027, 1), "2026-11"),
    ],
)
def test_bounds(name: str, start: tuple[int, int], end: tuple[int, int], previous: str) -> None:
    p = parse_period(name)
    assert p.name == name
    assert p.start == dt.datetime(*start, 1, tzinfo=BEIJING)
    assert p.end == dt.datetime(*end, 1, tzinfo=BEIJING)
    assert p.start_us == int(dt.datetime(*start, 1, tzinfo=BEIJING).timestamp()) * 1_000_000
    assert p.previous().name == previous
    assert p.contains(p.start_us) and not p.contains(p.end_us)


def test_labels() -> None:
    assert parse_period("2026-H2").label("zh") == "2026年下半年"
    assert parse_period("2026-Q4").label("zh") == "2026年第四季度"
    assert parse_period("2026-11").label("zh") == "2026年11月"
    assert parse_period("2026").label("zh") == "2026年度"
    assert parse_period("2026-H1").label("en") == "first half of 2026"


@pytest.mark.parametrize("bad", ["2026-H3", "2026-Q5", "2026-13", "2026-00", "26-H1", "H2", ""])
def test_bad_names_say_what_to_write(bad: str) -> None:
    with pytest.raises(ConfigError, match="2026-H2"):
        parse_period(bad)


def test_last_complete() -> None:
    now = dt.datetime(2027, 1, 1, 0, 30, tzinfo=CHINA_TZ)  # 2026-12-31 16:30 UTC
    assert last_complete("month", now).name == "2026-12"
    assert last_complete("half", now).name == "2026-H2"
    assert last_complete("quarter", now).name == "2026-Q4"
    assert last_complete("year", now).name == "2026"
    assert (
        last_complete("month", dt.datetime(2026, 12, 31, 23, 0, tzinfo=CHINA_TZ)).name == "2026-11"
    )
