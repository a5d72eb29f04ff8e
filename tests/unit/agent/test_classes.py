"""Classes of labelled files (agent/sensors/files/classes.py) and their journal records."""

from __future__ import annotations

import struct
from datetime import date
from pathlib import Path

from baomi.labels import Label

from agent.sensors.files.classes import ENTRY, FileClasses, pack
from agent.sensors.files.repeats import RepeatJournal

SECRET = Label(1, None, ("dept:t",), "REG-1", home="/srv/secret/a/f1")
OTHER_ID = Label(1, None, ("dept:t",), "REG-2", home="/srv/secret/a/f2")
SIG = ("policy-1", True, False)


def test_files_alike_but_for_id_and_home_share_a_class() -> None:
    c = FileClasses()
    first = c.add((1, 10, 100), SECRET, SIG, "/srv/secret/a/f1")
    assert first
    assert c.add((1, 11, 100), OTHER_ID, SIG, "/srv/secret/a/f2") == first
    assert c.label_of((1, 11, 100)) == OTHER_ID
    assert c.number_of((1, 11, 100)) == first
    assert c.number_of((1, 11, 101)) == 0  # another version: not classed


def test_level_period_scope_and_patterns_each_make_another_class() -> None:
    c = FileClasses()
    base = c.add((1, 10, 100), SECRET, SIG, "p")
    others = [
        c.add((1, 11, 1), Label(2, None, ("dept:t",), home="/h"), SIG, "p"),
        c.add((1, 12, 1), Label(1, date(2030, 1, 1), ("dept:t",), home="/h"), SIG, "p"),
        c.add((1, 13, 1), Label(1, None, ("dept:u",), home="/h"), SIG, "p"),
        c.add((1, 14, 1), Label(1, None, ("dept:t",), home="/h"), ("policy-1", False, False), "p"),
        c.add((1, 15, 1), Label(1, None, ("dept:t",), home="/h"), ("policy-2", True, False), "p"),
    ]
    assert len({base, *others}) == 6


def test_invalid_or_homeless_labels_and_too_many_files_are_not_classed() -> None:
    c = FileClasses(limit=1)
    assert c.add((1, 1, 1), Label(3, problem="the seal does not match"), SIG, "p") == 0
    assert c.add((1, 2, 1), Label(1), SIG, "p") == 0  # no home
    assert c.add((1, 3, 1), SECRET, SIG, "p")
    assert c.add((1, 4, 1), SECRET, SIG, "p") == 0  # over the limit
    assert c.add((1, 3, 2), SECRET, SIG, "p")  # a new version of one known: replaces it


def test_a_new_policy_never_reuses_a_class_number() -> None:
    c = FileClasses()
    old = c.add((1, 10, 100), SECRET, SIG, "p")
    entries = c.reclassify(lambda home: ("policy-2", True))
    (dev, ino, ctime_ns, number, _) = ENTRY.unpack(entries)
    assert (dev, ino, ctime_ns) == (1, 10, 100)
    assert number != old and number > old


def test_revalidate_keeps_a_file_whose_label_is_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    st = f.stat()
    label = Label(1, None, (), home=str(f))
    c = FileClasses()
    number = c.add((st.st_dev, st.st_ino, st.st_ctime_ns - 1), label, SIG, str(f))
    assert ENTRY.unpack(c.revalidate(lambda fd: label)) == (
        st.st_dev, st.st_ino, st.st_ctime_ns, number, 0,
    )  # fmt: skip
    changed = Label(2, None, (), home=str(f))
    c.add((st.st_dev, st.st_ino, st.st_ctime_ns - 1), label, SIG, str(f))
    assert c.revalidate(lambda fd: changed) == b""  # its label changed: forgotten
    assert c.label_of((st.st_dev, st.st_ino, st.st_ctime_ns)) is None


def test_pack_leaves_out_the_unclassed() -> None:
    assert pack([((1, 2, 3), 0), ((1, 2, 4), 7)]) == ENTRY.pack(1, 2, 4, 7, 0)


def test_the_journal_reads_back_the_file_of_a_class_answer(tmp_path: Path) -> None:
    journal = RepeatJournal(tmp_path / "j", half_bytes=8192)
    event = b"E" * 13
    path = b"/srv/secret/a/f2"
    half = bytearray()
    half += struct.pack("<II", 1, len(event)) + event + b"\0" * 3
    at_file = len(half)
    half += struct.pack("<IIQQQq", 3, len(path), 0, 1, 11, 100) + path
    half += struct.pack("<IIQq", 2, 4242, at_file, 5)  # two repeats of that file
    half += struct.pack("<IIQq", 2, 4242, at_file, 6)
    half += struct.pack("<IIQq", 2, 4243, 0, 7)  # and one of the template itself
    # the header: generation 1 being written, in half 1, not done
    offset = 4096 + 8192
    journal._map[offset : offset + len(half)] = bytes(half)
    struct.pack_into("<QQQQQ", journal._map, 24, 1, 0, 0, 1, len(half))
    back = journal.read_back()
    journal.close()
    assert len(back) == 2
    by_pid = {r.pid: r for r in back}
    assert by_pid[4242].file == (1, 11, 100, path)
    assert by_pid[4242].event == event
    assert (by_pid[4242].count, by_pid[4242].first_ns, by_pid[4242].last_ns) == (2, 5, 6)
    assert by_pid[4243].file is None
    assert by_pid[4243].event == event


def test_current_gives_every_known_version_once() -> None:
    c = FileClasses()
    first = c.add((1, 10, 100), SECRET, SIG, "p")
    c.add((1, 10, 101), SECRET, SIG, "p")  # relabelled: the old version is gone
    second = c.add((1, 11, 100), OTHER_ID, SIG, "q")
    assert sorted(ENTRY.iter_unpack(c.current())) == [
        (1, 10, 101, first, 0),
        (1, 11, 100, second, 0),
    ]
