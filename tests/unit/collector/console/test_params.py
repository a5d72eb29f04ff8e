"""What the console makes of query strings, form fields and ids in links: bad values are
refused with a message (400), never handed to a store that fails
on them (a 500): SQLite takes no integer beyond 64 bits, PostgreSQL no NUL in text.
Found by fuzzing (fuzz/targets.py, console_query)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import pytest
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.routing import Match, Route

from collector.console.app import ID_MAX, Ctx, parse_id
from collector.console.errors import ConsoleError
from collector.console.eventview import Filters
from collector.console.routes import events as pages

if TYPE_CHECKING:
    from starlette.types import Message

    from collector.console.app import Console

HUGE = "9" * 30


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), ("000042", 42), ("9" * 18, 10**18 - 1), (str(2**63 - 1), 2**63 - 1),
     (str(2**63), None), ("0", None), ("", None), ("²", None), ("3¹", None), ("١٢", None),
     ("9" * 19, None), (" 1", None), ("-1", None), ("0x1", None)],
)  # fmt: skip
def test_parse_id(text: str, value: int | None) -> None:
    assert parse_id(text) == value


def test_a_route_id_of_any_length_reaches_the_range_check() -> None:
    route = Route("/events/{host}/{seq:id}", pages.event_detail)

    def match(path: str) -> tuple[Match, object]:
        found, child = route.matches({"type": "http", "path": path, "method": "GET"})
        return found, child.get("path_params")

    assert match("/events/ws-01/12") == (Match.FULL, {"host": "ws-01", "seq": 12})
    assert match(f"/events/ws-01/{2**63 - 1}")[1] == {"host": "ws-01", "seq": ID_MAX}
    # Too long for any column: one value past the range, which guard() answers with 400
    # (5000 digits was a ValueError in int()).
    for digits in (str(2**63), HUGE, "1" * 5000):
        assert match("/events/ws-01/" + digits)[1] == {"host": "ws-01", "seq": ID_MAX + 1}
    assert match("/events/ws-01/" + "0" * 40 + "7")[1] == {"host": "ws-01", "seq": 7}


def test_page_cursors() -> None:
    assert pages._cursor("") is None
    cursor = (1_764_201_600_000_000, "ws-01", 7)
    assert pages._cursor(pages._cursor_text(cursor)) == cursor
    assert pages._cursor("-5_1_ws_with_underscores") == (-5, "ws_with_underscores", 1)
    for damaged in (f"{HUGE}_1_ws-01", f"1_{HUGE}_ws-01", "1_2_ws\x00", "1_ws-01", "x_1_ws"):
        with pytest.raises(ConsoleError, match="page link is damaged"):
            pages._cursor(damaged)


def test_filters_refuse_nul() -> None:
    assert Filters.of(QueryParams(b"host=ws-01&user=wang")).host == "ws-01"
    for query in (b"host=ws%0001", b"user=%00", b"path=/srv/%00", b"since=2026%00"):
        with pytest.raises(ConsoleError, match="holds a NUL character"):
            Filters.of(QueryParams(query))


def _field(body: bytes, name: str) -> str:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
    }
    ctx = Ctx(cast("Console", None), Request(scope, receive), None, "zh")
    return asyncio.run(ctx.field(name))


def test_form_fields_refuse_nul() -> None:
    assert _field(b"host=ws-01&seq=3", "host") == "ws-01"
    with pytest.raises(ConsoleError, match="'host' holds a NUL character"):
        _field(b"host=ws%0001&seq=3", "host")
