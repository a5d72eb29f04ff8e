"""Meeting rooms files: a cabinet's address that cannot be used is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.meeting.rooms import RoomsError, load_rooms

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
