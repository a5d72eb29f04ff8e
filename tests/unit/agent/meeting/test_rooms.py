"""Meeting rooms files: a cabinet's address that cannot be used is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from baomi.meeting.rooms import RoomsError, load_meetings, load_rooms

ROOM = """\
[rooms.r1]

[rooms.r1.cabinet]
adapter = "http"
url = "{url}"
"""


def _rooms(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "rooms.toml"
    path.write_text(ROOM.format(url=url), encoding="utf-8")
    return path


def test_an_http_cabinet_loads(tmp_path: Path) -> None:
    room = load_rooms(_rooms(tmp_path, "https://[fd00::5]:8443/state"))["r1"]
    assert room.cabinet is not None and room.cabinet.url == "https://[fd00::5]:8443/state"


# Found by fuzzing (fuzz/targets.py, rooms): urlsplit raises ValueError for these, which
# escaped load_rooms as a traceback instead of a RoomsError naming the line.
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/state",  # unbalanced bracket
        "http://[cabinet]/state",  # not an IPv6 address
        "http://cabinet:99999/state",  # port out of range
        "http://cabinet:http/state",  # port not a number
        "http://cabinet:0/state",
        "ftp://cabinet/state",
    ],
)
def test_a_cabinet_url_that_cannot_be_used_is_named(tmp_path: Path, url: str) -> None:
    with pytest.raises(RoomsError, match=r"rooms\.toml:5: cabinet: bad address: .* http\(s\) URL"):
        load_rooms(_rooms(tmp_path, url))


def _line(path: Path, text: str) -> int:
    return next(n for n, t in enumerate(path.read_text().splitlines(), 1) if text in t)


def test_an_error_in_a_room_named_after_a_prefix_of_another_names_its_own_line(
    tmp_path: Path,
) -> None:
    """[rooms.r30] after [rooms.r301]: the error is on r30's line, not r301's."""
    path = tmp_path / "rooms.toml"
    path.write_text(
        "[rooms.r301]\nmargin_db = 10.0\n\n[rooms.r30]\nmargin_db = -1.0\n",
        encoding="utf-8",
    )
    with pytest.raises(RoomsError) as caught:
        load_rooms(path)
    assert (caught.value.line, caught.value.reason) == (
        _line(path, "-1.0"),
        "room r30: margin_db must be positive",
    )


def test_a_key_missing_from_its_table_is_not_found_in_the_next(tmp_path: Path) -> None:
    """The error of a key a table lacks is on its header, not on the same key of the
    table after it."""
    path = tmp_path / "rooms.toml"
    path.write_text(
        '[rooms.r1.cabinet]\nadapter = "manual"\nkey = "k.pem"\n\n'
        '[rooms.r2.cabinet]\nadapter = "manual"\nattestation = "a.json"\nkey = "k.pem"\n',
        encoding="utf-8",
    )
    with pytest.raises(RoomsError, match=r"rooms\.toml:1: cabinet: a manual cabinet needs"):
        load_rooms(path)


def test_quoted_room_names_are_found(tmp_path: Path) -> None:
    path = tmp_path / "rooms.toml"
    path.write_text('[rooms."r 3"]\n\n[rooms."r 30"]\nmargin_db = 0\n', encoding="utf-8")
    with pytest.raises(RoomsError, match=r"rooms\.toml:4: room r 30: margin_db must be"):
        load_rooms(path)


def test_meeting_errors_name_their_own_line(tmp_path: Path) -> None:
    path = tmp_path / "meetings.toml"
    path.write_text(
        '[meetings.m10]\nroom = "r1"\nlevel = "秘密"\n\n'
        '[meetings.m1]\nroom = "r1"\nlevel = "秘密"\ncheck_before_minutes = -5\n',
        encoding="utf-8",
    )
    with pytest.raises(RoomsError) as caught:
        load_meetings(path)
    assert caught.value.line == _line(path, "-5")
    assert caught.value.reason == "meeting m1: check_before_minutes must be 0-1440 minutes"


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        ("2026-12-01T09:00:00", "start must be a TOML date-time with its offset"),
        ('"tomorrow"', "start must be a TOML date-time with its offset"),
    ],
)
def test_a_meeting_start_needs_its_offset(tmp_path: Path, start: str, reason: str) -> None:
    path = tmp_path / "meetings.toml"
    path.write_text(f'[meetings.m1]\nroom = "r1"\nlevel = "秘密"\nstart = {start}\n')
    with pytest.raises(RoomsError, match=rf"meetings\.toml:4: meeting m1: {reason}"):
        load_meetings(path)


def test_a_misspelt_meeting_key_is_named(tmp_path: Path) -> None:
    """A window setting spelt wrong would silently leave the default window."""
    path = tmp_path / "meetings.toml"
    path.write_text('[meetings.m1]\nroom = "r1"\nlevel = "秘密"\ncheck_befor_minutes = 240\n')
    with pytest.raises(RoomsError, match=r"meetings\.toml:4: meeting m1: unknown key 'check_befor"):
        load_meetings(path)
