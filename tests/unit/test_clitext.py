# Chinese text uses full-width punctuation:
# ruff: noqa: RUF001
"""baomi.clitext: the language from the environment, the catalogue, and terminal cells."""

from __future__ import annotations

import pytest
from baomi import clitext
from baomi.clitext import cells, fit, lang, pad, t, table


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "en"),
        ({"LANG": "C"}, "en"),
        ({"LANG": "POSIX"}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "zh_TW.Big5"}, "zh"),
        ({"LANG": "zh"}, "zh"),
        ({"LANG": "ZH_cn"}, "zh"),
        # POSIX order: LC_ALL, then LC_MESSAGES, then LANG; an empty one does not count.
        ({"LC_ALL": "C", "LANG": "zh_CN.UTF-8"}, "en"),
        ({"LC_ALL": "zh_CN.UTF-8", "LANG": "C"}, "zh"),
        ({"LC_MESSAGES": "zh_CN.UTF-8", "LANG": "C"}, "zh"),
        ({"LC_ALL": "C", "LC_MESSAGES": "zh_CN.UTF-8"}, "en"),
        ({"LC_ALL": "", "LC_MESSAGES": "", "LANG": "zh_CN.UTF-8"}, "zh"),
    ],
)
def test_language_from_the_environment(environ: dict[str, str], expected: str) -> None:
    assert lang(environ) == expected


def test_lang_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert lang() == "zh" and t("meeting.cleared") == "准予召开"
    monkeypatch.setenv("LANG", "C")
    assert lang() == "en" and t("meeting.cleared") == "CLEARED"


def test_catalogue_lookup_fills_fields_and_falls_back() -> None:
    assert t("meeting.signed", "zh", host="h1", seq=7) == "已由 h1 签名，暂存为事件 7"
    assert t("meeting.signed", "en", host="h1", seq=7) == "signed by h1, spooled as event 7"
    # No English item titles here: the checklist's own (agent.meeting.check) are the default.
    assert t("meeting.item.C1", "en", default="no capture") == "no capture"
    assert t("meeting.item.C1", "zh", default="no capture") == "无未经批准的音视频采集设备"
    assert t("no.such.key", "zh") == "no.such.key"


def test_every_english_message_has_a_chinese_one() -> None:
    """A Chinese user never meets an English header or label the catalogue forgot."""
    assert set(clitext.MESSAGES["en"]) <= set(clitext.MESSAGES["zh"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("ID", 2),
        ("准予召开", 8),
        ("C1 未通过", 9),
        ("ＡＢ", 4),  # full-width letters take two cells
        ("e\u0301", 1),  # a combining acute accent takes none
        ("…", 1),  # ambiguous width: one cell, as most terminals draw it
    ],
)
def test_cells(text: str, expected: int) -> None:
    assert cells(text) == expected


def test_pad_and_fit_count_cells() -> None:
    assert pad("通过", 8) == "通过    "
    assert pad("pass", 8) == "pass    "
    assert pad("不准召开", 4) == "不准召开"  # never cut
    assert fit("abc", 3) == "abc"
    assert fit("abcdef", 4) == "abc…"
    assert fit("准予召开", 8) == "准予召开"
    assert fit("准予召开", 7) == "准予召…"
    # A wide character that would end past the width is left out, not split.
    assert fit("准予召开", 6) == "准予…"
    assert cells(fit("准予召开", 6)) == 5


def test_table_lines_up_columns_by_cells() -> None:
    lines = table([("结果", "ID", "x"), ("pass", "C10", "y"), ("未通过", "C1", "z")])
    assert lines == ["结果    ID   x", "pass    C10  y", "未通过  C1   z"]
