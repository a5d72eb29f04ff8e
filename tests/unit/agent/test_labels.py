"""Labels live in user.baomi.* xattrs; anything malformed reads as a fail-closed label."""

from __future__ import annotations

import errno
import os
from datetime import date
from pathlib import Path

import pytest
from baomi import labels
from baomi.labels import (
    XATTR_HOME,
    XATTR_ID,
    XATTR_LEVEL,
    XATTR_SCOPE,
    XATTR_SEAL,
    XATTR_UNTIL,
    Label,
    clear_label,
    effective_level,
    inherit_label,
    load_label_key,
    read_label,
    set_label,
)
from baomi.policy.errors import LabelError

TODAY = date(2026, 11, 27)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    """A file on a filesystem that takes user xattrs (skip the test otherwise)."""
    path = tmp_path / "report.docx"
    path.write_bytes(b"secret")
    try:
        os.setxattr(path, "user.baomi.probe", b"1")
        os.removexattr(path, "user.baomi.probe")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"{tmp_path} does not support user extended attributes")
        raise
    return path


def _raw(path: Path, **attrs: bytes) -> None:
    for name, value in attrs.items():
        os.setxattr(path, f"user.baomi.{name}", value)


def test_unlabelled_file_has_no_label(doc: Path) -> None:
    os.setxattr(doc, "user.other", b"x")  # other namespaces are not ours
    assert read_label(doc) is None
    assert effective_level(None, TODAY) == 0


def test_set_and_read_round_trip(doc: Path) -> None:
    written = set_label(
        doc, "机密", until="2031-06-30", scope="dept:finance,user:wang", label_id="BM-2026-7"
    )
    got = read_label(doc)
    want = Label(2, date(2031, 6, 30), ("dept:finance", "user:wang"), "BM-2026-7", home=str(doc))
    assert got == written == want
    assert got.valid
    assert os.getxattr(doc, XATTR_HOME) == str(doc).encode()  # where it was labelled
    assert os.getxattr(doc, XATTR_LEVEL) == "机密".encode()
    assert os.getxattr(doc, XATTR_UNTIL) == b"2031-06-30"
    assert os.getxattr(doc, XATTR_SCOPE) == b"dept:finance,user:wang"
    assert os.getxattr(doc, XATTR_ID) == b"BM-2026-7"


@pytest.mark.parametrize(
    ("word", "level"),
    [
        ("绝密", 3), ("机密", 2), ("秘密", 1), ("内部", 0),
        ("top-secret", 3), ("secret", 2), ("confidential", 1), ("internal", 0),
        ("TOP_SECRET", 3), ("3", 3), ("2", 2), ("1", 1), ("0", 0), (3, 3),
    ],
)  # fmt: skip
def test_level_words(doc: Path, word: str | int, level: int) -> None:
    assert set_label(doc, word).level == level
    label = read_label(doc)
    assert label is not None
    assert label.level == level


def test_attributes_not_given_are_removed(doc: Path) -> None:
    set_label(doc, "绝密", until="2030-01-01", scope="user:wang", label_id="X")
    set_label(doc, "秘密")
    assert read_label(doc) == Label(1, home=str(doc))
    assert sorted(os.listxattr(doc)) == sorted([XATTR_LEVEL, XATTR_HOME])


def test_set_label_by_fd(doc: Path) -> None:
    fd = os.open(doc, os.O_RDONLY)
    try:
        set_label(fd, "secret", scope=["role:analyst"])
        assert read_label(fd) == Label(2, scope=("role:analyst",), home=str(doc))
    finally:
        os.close(fd)
    assert read_label(doc) == Label(2, scope=("role:analyst",), home=str(doc))


def test_expiry_declassifies(doc: Path) -> None:
    set_label(doc, "绝密", until="2026-11-26")
    label = read_label(doc)
    assert label is not None
    assert effective_level(label, date(2026, 11, 26)) == 3  # the last day is still secret
    assert effective_level(label, TODAY) == 0  # 自行解密
    assert effective_level(Label(2), TODAY) == 2


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"level": "五".encode()}, "is not a level"),
        ({"level": b"\xff\xfe"}, "not UTF-8"),
        ({"level": b"x" * 100}, "at most 32"),
        ({"level": b"secret\x00"}, "control characters"),
        ({"level": b"updating"}, "update in progress"),
        ({"level": b"2", "until": b"2030-13-01"}, "not a calendar date"),
        ({"level": b"2", "until": b"2030-W01-1"}, "YYYY-MM-DD"),
        ({"level": b"2", "until": b"31/12/2030"}, "YYYY-MM-DD"),
        ({"level": b"2", "scope": b"finance"}, "not user:NAME"),
        ({"level": b"2", "scope": b"dept:a,,dept:b"}, "not user:NAME"),
        ({"level": b"2", "scope": b"user:" + b"a" * 65}, "not user:NAME"),
        ({"level": b"2", "scope": b"user:a b"}, "not user:NAME"),
        ({"level": b"2", "scope": b",".join(b"user:u%d" % i for i in range(65))}, "at most 64"),
        ({"level": b"2", "label_id": b"a b"}, "label id"),
        ({"level": b"2", "label_id": b"x" * 200}, "at most 128"),
        ({"until": b"2030-01-01"}, "user.baomi.level is missing"),
        ({"level": b"2", "levle": b"0"}, "unknown attribute user.baomi.levle"),
    ],
)
def test_malformed_labels_fail_closed(doc: Path, attrs: dict[str, bytes], problem: str) -> None:
    _raw(doc, **attrs)
    label = read_label(doc)
    assert label is not None
    assert not label.valid
    assert label.level == 3
    assert label.problem is not None and problem in label.problem
    assert effective_level(label, TODAY) == 3
    assert "invalid label" in label.describe()


def test_oversized_values_are_not_believed() -> None:
    """ext4 cannot even store values this big; other filesystems (tmpfs, xfs) can."""
    raw = {XATTR_LEVEL: b"2", XATTR_SCOPE: b"dept:" + b"x," * 3000}
    label = labels.parse_label(raw)
    assert label is not None
    assert label.problem is not None and "at most 4096" in label.problem


def test_invalid_label_with_past_until_stays_closed(doc: Path) -> None:
    _raw(doc, level=b"nonsense", until=b"2000-01-01")
    label = read_label(doc)
    assert label is not None
    assert effective_level(label, TODAY) == 3


def test_set_label_refuses_bad_values(doc: Path) -> None:
    with pytest.raises(LabelError, match="not a level"):
        set_label(doc, "very secret")
    with pytest.raises(LabelError, match="YYYY-MM-DD"):
        set_label(doc, "机密", until="next year")
    with pytest.raises(LabelError, match="user:NAME"):
        set_label(doc, "机密", scope="finance")
    assert read_label(doc) is None  # nothing was written


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_label(tmp_path / "nope")
    with pytest.raises(LabelError, match="cannot write"):
        set_label(tmp_path / "nope", "机密")


def test_unreadable_attributes_fail_closed(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_label(doc, "秘密")

    def eio(*_: object) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(labels.os, "getxattr", eio)
    label = read_label(doc)
    assert label is not None
    assert label.level == 3
    assert label.problem is not None and "Input/output error" in label.problem


def test_filesystem_without_xattrs_reads_unlabelled(
    doc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enotsup(*_: object) -> list[str]:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(labels.os, "listxattr", enotsup)
    assert read_label(doc) is None
    with pytest.raises(LabelError, match="does not support user extended attributes"):
        set_label(doc, "机密")


def test_clear_label(doc: Path) -> None:
    assert clear_label(doc) is False
    set_label(doc, "绝密", scope="user:wang", until="2030-01-01")
    os.setxattr(doc, "user.baomi.stray", b"1")
    os.setxattr(doc, "user.keep", b"1")
    assert clear_label(doc) is True
    assert read_label(doc) is None
    assert os.listxattr(doc) == ["user.keep"]


def test_interrupted_update_reads_fail_closed(doc: Path) -> None:
    """The marker a rewrite starts with is what a crash in the middle leaves behind."""
    set_label(doc, "秘密", scope="dept:finance")
    os.setxattr(doc, XATTR_LEVEL, b"updating")
    os.removexattr(doc, XATTR_SCOPE)
    label = read_label(doc)
    assert label is not None
    assert label.level == 3
    assert not label.valid


def test_inherit_label(tmp_path: Path, doc: Path) -> None:
    folder = tmp_path / "finance"
    folder.mkdir()
    set_label(folder, "机密", until="2031-06-30", scope="dept:finance", label_id="BM-1")
    new = folder / "draft.docx"
    new.write_bytes(b"")
    got = inherit_label(folder, new)
    want = Label(2, date(2031, 6, 30), ("dept:finance",), "BM-1", home=f"{folder}/draft.docx")
    assert got == want
    assert read_label(new) == got


def test_inherit_keeps_an_existing_label(tmp_path: Path, doc: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    set_label(folder, "秘密")
    new = folder / "moved-in.docx"
    new.write_bytes(b"")
    set_label(new, "绝密")
    assert inherit_label(folder, new) == Label(3, home=str(new))


def test_inherit_from_unlabelled_directory(tmp_path: Path, doc: Path) -> None:
    assert inherit_label(tmp_path, doc) is None
    assert read_label(doc) is None


def test_inherit_copies_an_invalid_label_as_invalid(tmp_path: Path, doc: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    os.setxattr(folder, XATTR_LEVEL, b"nonsense")
    new = folder / "x"
    new.write_bytes(b"")
    fd = os.open(new, os.O_RDONLY)
    try:
        got = inherit_label(folder, fd)
    finally:
        os.close(fd)
    assert got is not None
    assert not got.valid
    assert got.level == 3


# --- seals ------------------------------------------------------------------------------
KEY = bytes(range(32))


def test_a_sealed_label_reads_with_its_key(doc: Path) -> None:
    written = set_label(doc, "机密", until="2031-06-30", scope="dept:finance", key=KEY)
    assert os.getxattr(doc, XATTR_SEAL)  # hex HMAC next to the label
    assert read_label(doc, KEY) == written
    assert read_label(doc) == written  # without a key, seals are not checked
    fd = os.open(doc, os.O_RDONLY)
    try:
        assert read_label(fd, KEY) == written  # by fd, as the file guard reads it
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ((XATTR_LEVEL, "内部".encode()), "the seal does not match"),
        ((XATTR_SCOPE, b"dept:finance,dept:sales"), "the seal does not match"),
        ((XATTR_UNTIL, b"2020-01-01"), "the seal does not match"),
        ((XATTR_ID, b"BM-forged"), "the seal does not match"),
        ((XATTR_SEAL, b"0" * 64), "the seal does not match"),
    ],
)
def test_a_label_changed_by_the_files_writer_fails_closed(
    doc: Path, change: tuple[str, bytes], problem: str
) -> None:
    set_label(doc, "机密", until="2031-06-30", scope="dept:finance", key=KEY)
    os.setxattr(doc, *change)
    label = read_label(doc, KEY)
    assert label is not None and not label.valid and label.level == labels.TOP_SECRET
    assert label.problem is not None and problem in label.problem


def test_a_seal_is_for_one_file_and_one_key(tmp_path: Path, doc: Path) -> None:
    low = tmp_path / "notice.txt"
    low.write_bytes(b"")
    set_label(low, "内部", key=KEY)
    set_label(doc, "绝密", key=KEY)
    for name in os.listxattr(low):  # the writer copies a low label, seal and all
        os.setxattr(doc, name, os.getxattr(low, name))
    copied = read_label(doc, KEY)
    assert copied is not None and not copied.valid
    assert read_label(low, bytes(32)) == labels.invalid_label(
        "the seal does not match: the label was changed outside baomi-agent label set, "
        "or it belongs to another file; set it again"
    )


def test_an_unsealed_label_fails_closed_where_seals_are_checked(doc: Path) -> None:
    set_label(doc, "秘密")
    label = read_label(doc, KEY)
    assert label is not None and not label.valid
    assert label.problem is not None and "user.baomi.seal is missing" in label.problem


def test_inherit_seals_the_new_files_label(tmp_path: Path, doc: Path) -> None:
    set_label(tmp_path, "机密", scope="dept:finance", key=KEY)
    inherited = inherit_label(tmp_path, doc, KEY)
    assert inherited == Label(2, None, ("dept:finance",), home=f"{tmp_path}/{doc.name}")
    assert os.getxattr(doc, XATTR_SEAL) != os.getxattr(tmp_path, XATTR_SEAL)
    assert read_label(doc, KEY) == inherited


def test_inherit_from_a_tampered_directory_fails_closed(tmp_path: Path, doc: Path) -> None:
    set_label(tmp_path, "机密", key=KEY)
    os.setxattr(tmp_path, XATTR_LEVEL, "内部".encode())
    inherited = inherit_label(tmp_path, doc, KEY)
    assert inherited is not None and not inherited.valid
    assert XATTR_SEAL not in os.listxattr(doc)


def test_label_key_is_made_once_root_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "label.key"
    with pytest.raises(LabelError, match="no label key yet"):
        load_label_key(path)
    key = load_label_key(path, create=True)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_label_key(path, create=True) == key  # not made again
    path.write_bytes(b"short")
    with pytest.raises(LabelError, match="a label key is 32 bytes, this one 5; restore it"):
        load_label_key(path)


# --- homes ------------------------------------------------------------------------------
def test_the_home_stays_where_the_file_was_labelled(tmp_path: Path, doc: Path) -> None:
    set_label(doc, "机密", key=KEY)
    moved = tmp_path / "elsewhere.docx"
    doc.rename(moved)
    linked = tmp_path / "link.docx"
    os.link(moved, linked)
    for path in (moved, linked):
        label = read_label(path, KEY)
        assert label is not None and label.valid and label.home == str(doc)


def test_a_home_changed_by_the_writer_breaks_the_seal(doc: Path) -> None:
    set_label(doc, "机密", key=KEY)
    os.setxattr(doc, XATTR_HOME, b"/srv/secret/shared/x")
    label = read_label(doc, KEY)
    assert label is not None and not label.valid and "seal does not match" in (label.problem or "")


def test_a_sealed_label_without_a_home_fails_closed(doc: Path) -> None:
    set_label(doc, "秘密", key=KEY)
    raw = {n: os.getxattr(doc, n) for n in os.listxattr(doc) if n != XATTR_HOME}
    raw.pop(XATTR_SEAL)
    # Sealed as an older agent sealed it: the same attributes, no home.
    os.removexattr(doc, XATTR_HOME)
    os.setxattr(doc, XATTR_SEAL, labels._seal(KEY, doc, raw))
    label = read_label(doc, KEY)
    assert label is not None and not label.valid and "home is missing" in (label.problem or "")


@pytest.mark.parametrize(
    "home", [b"relative/path", b"/a/../b", b"/a//b", b"/a/./b", b"/a/", b"/a\x01b"]
)
def test_malformed_homes_fail_closed(doc: Path, home: bytes) -> None:
    _raw(doc, level=b"2", home=home)
    label = read_label(doc)
    assert label is not None and not label.valid and "home" in (label.problem or "")


def test_an_explicit_home(doc: Path) -> None:
    assert (
        set_label(doc, "秘密", home="/srv/secret/finance/a.txt").home == "/srv/secret/finance/a.txt"
    )
    with pytest.raises(LabelError, match="absolute path"):
        set_label(doc, "秘密", home="finance/a.txt")


# Found by fuzzing (fuzz/targets.py, labels): values an operator gives on the command line
# arrive through surrogateescape, and what set_label accepts must read back as set.
@pytest.mark.parametrize(
    ("scope", "home"),
    [
        ("user:wang\udcff", None),  # an undecodable byte: was an uncaught UnicodeEncodeError
        ("user:wang\x01", None),  # a control character: was written, then read as invalid
        ("", "/srv/secret/a\udcffb"),  # was a UnicodeEncodeError inside parse_home
        ("", "/srv/secret/a\x00b"),  # was written, then read as invalid
    ],
)
def test_set_label_refuses_what_would_not_read_back(
    doc: Path, scope: str, home: str | None
) -> None:
    with pytest.raises(LabelError, match=r"user:NAME|not UTF-8|control characters"):
        set_label(doc, "机密", scope=scope, home=home)
    assert read_label(doc) is None  # nothing was written


def test_helpers_refuse_undecodable_text_with_a_message() -> None:
    for parse, text in ((labels.parse_home, "/a\udcff"), (labels.parse_scope, "dept:\udcff")):
        with pytest.raises(ValueError, match=r"not UTF-8|dept:NAME") as err:
            parse(text)
        assert not isinstance(err.value, UnicodeError)


def test_derive_label_gives_the_sources_level_sealed_with_its_source(
    tmp_path: Path, doc: Path
) -> None:
    key = b"k" * 32
    source = set_label(doc, "机密", until="2031-06-30", scope="dept:finance", key=key)
    copy = tmp_path / "copy.docx"
    copy.write_bytes(b"")
    got = labels.derive_label(copy, source, key, home=str(copy))
    want = Label(2, date(2031, 6, 30), ("dept:finance",), home=str(copy), derived_from=str(doc))
    assert got == want
    assert read_label(copy, key) == want  # sealed: valid under the key
    assert "derived from " + str(doc) in want.describe()
    # a derived label is as tamper-evident as any: its source changed by hand breaks it
    os.setxattr(copy, labels.XATTR_DERIVED, b"/elsewhere")
    assert not read_label(copy, key).valid  # type: ignore[union-attr]


def test_derive_label_keeps_an_equal_or_higher_label_and_raises_a_lower_one(
    tmp_path: Path,
) -> None:
    key = b"k" * 32
    source = Label(2, label_id="BM-7", home="/srv/secret/a.doc")
    higher, lower = tmp_path / "higher", tmp_path / "lower"
    for f, level in ((higher, "绝密"), (lower, "秘密")):
        f.write_bytes(b"")
        set_label(f, level, key=key)
    assert labels.derive_label(higher, source, key, home=str(higher)) is None
    assert read_label(higher, key) == Label(3, home=str(higher))
    raised = labels.derive_label(lower, source, key, home=str(lower))
    assert raised == Label(2, label_id="BM-7", home=str(lower), derived_from="BM-7")
