"""The one escaping rule for attacker-chosen strings (baomi.display)."""

from __future__ import annotations

import json

import jinja2
import pytest
from baomi import display
from markupsafe import Markup

HIDDEN = (
    [chr(c) for c in range(0x20)]
    + ["\x7f"]
    + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u061c", "\ufeff", "\u2028"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)


@pytest.mark.parametrize("char", HIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_every_control_and_format_character_is_a_visible_escape(char: str) -> None:
    shown = display.escape(f"a{char}b")
    assert shown.startswith("a\\") and shown.endswith("b")
    assert shown.isascii() and shown.isprintable()


def test_escapes_read_as_what_they_are() -> None:
    assert display.escape("Backup\u202egnp.exe") == "Backup\\u202egnp.exe"
    assert display.escape("\x1b[2J\x07line\nnext\ttab\r") == "\\x1b[2J\\x07line\\nnext\\ttab\\r"
    assert display.escape("\x9b\x7f") == "\\x9b\\x7f"
    assert display.escape("not utf-8 \udcff") == "not utf-8 \\xff"  # surrogateescape
    assert display.escape("tag \U000e0041") == "tag \\U000e0041"
    # A typed backslash is doubled: "\u202e" on screen is always the character.
    assert display.escape("a\\u202e") == "a\\\\u202e"


def test_readable_text_is_left_alone() -> None:
    for text in (
        "机密 文件.docx",
        "/home/王/报告 2026.pdf",
        "SanDisk Cruzer",
        "naïve café",
        "全角　空格",
    ):
        assert display.escape(text) == text


def test_lines_keep_newlines_tabs_and_backslashes() -> None:
    text = 'rule = "a\\\\d"\n\tname = "x\u202ey"\x1b'
    assert display.escape(text, lines=True) == 'rule = "a\\\\d"\n\tname = "x\\u202ey"\\x1b'


def test_escape_json_is_still_the_same_json() -> None:
    doc = {"name": "Backup\u202egnp.exe\x1b[31m\x85\u2066", "n": 1, "zh": "机密"}
    text = display.escape_json(json.dumps(doc, ensure_ascii=False))
    assert json.loads(text) == doc
    assert "\u202e" not in text and "\x1b" not in text and "\x85" not in text
    assert "机密" in text


def test_jinja_finalize_escapes_every_printed_string() -> None:
    env = jinja2.Environment(autoescape=True, finalize=display.finalize)
    env.filters["lines"] = display.Lines
    page = env.from_string("<p>{{ name }}</p><pre>{{ body|lines }}</pre>{{ chart }}{{ n }}").render(
        name="<b>x\u202e</b>\n",
        body="line one\u202e\nline two",
        chart=Markup("<svg>\n<text>a\u202e</text></svg>"),
        n=7,
    )
    assert page == (
        "<p>&lt;b&gt;x\\u202e&lt;/b&gt;\\n</p><pre>line one\\u202e\nline two</pre>"
        "<svg>\n<text>a\\u202e</text></svg>7"
    )
