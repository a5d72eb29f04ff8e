"""The state the DAC keeper computes: owner, mode bits and ACL entries, and their xattr."""

from __future__ import annotations

import struct

import pytest

from agent.sensors.files.dac import (
    GROUP_OBJ,
    MASK,
    OTHER,
    USER,
    USER_OBJ,
    Dac,
    decode_acl,
    encode_acl,
    wanted,
)

NONE = 0xFFFFFFFF

CASES = [
    # (what, is_dir, executable, holders, mode, ACL entries)
    ("file, nobody may write", False, False, [], 0o644, ()),
    ("executable file", False, True, [], 0o755, ()),
    ("directory, nobody may delete", True, False, [], 0o755, ()),
    ("root is never listed", False, False, [0], 0o644, ()),
    (
        "file writers, sorted, once each",
        False,
        False,
        [1003, 1001, 1003, 0],
        0o664,  # the group bits show the mask; the owning group keeps r--
        (
            (USER_OBJ, 6, NONE),
            (USER, 6, 1001),
            (USER, 6, 1003),
            (GROUP_OBJ, 4, NONE),
            (MASK, 6, NONE),
            (OTHER, 4, NONE),
        ),
    ),
    (
        "executable file: writers get rw- only",
        False,
        True,
        [1002],
        0o775,
        (
            (USER_OBJ, 7, NONE),
            (USER, 6, 1002),
            (GROUP_OBJ, 5, NONE),
            (MASK, 7, NONE),
            (OTHER, 5, NONE),
        ),
    ),
    (
        "directory deleters get rwx",
        True,
        False,
        [1007],
        0o775,
        (
            (USER_OBJ, 7, NONE),
            (USER, 7, 1007),
            (GROUP_OBJ, 5, NONE),
            (MASK, 7, NONE),
            (OTHER, 5, NONE),
        ),
    ),
]


@pytest.mark.parametrize(
    ("what", "is_dir", "executable", "holders", "mode", "acl"), CASES, ids=[c[0] for c in CASES]
)
def test_wanted_state(
    what: str,
    is_dir: bool,
    executable: bool,
    holders: list[int],
    mode: int,
    acl: tuple[tuple[int, int, int], ...],
) -> None:
    got = wanted(is_dir=is_dir, executable=executable, holders=holders)
    assert got == Dac(0, 0, mode, acl), what
    assert got.mode & 0o002 == 0  # other never writes
    assert all(perm & 2 == 0 for tag, perm, _ in got.acl if tag in (GROUP_OBJ, OTHER))


def test_describe_reads_like_getfacl() -> None:
    dac = wanted(is_dir=False, executable=False, holders=[1002])
    assert dac.describe() == "0:0 0664 user:1002:rw-,group::r--,mask::rw-"
    assert dac.grants() == ["user:1002:rw-"]
    drifted = Dac(2003, 0, 0o777, default_acl=((USER_OBJ, 7, NONE),))
    assert drifted.describe() == "2003:0 0777 default:user::rwx"


def test_acl_xattr_round_trip_and_layout() -> None:
    acl = wanted(is_dir=True, executable=False, holders=[1001]).acl
    raw = encode_acl(acl)
    # linux/posix_acl_xattr.h: version 2, then (tag, perm, id) little endian
    assert raw[:4] == struct.pack("<I", 2) and len(raw) == 4 + 8 * len(acl)
    assert raw[4:12] == struct.pack("<HHI", USER_OBJ, 7, NONE)
    assert decode_acl(raw) == acl


@pytest.mark.parametrize("raw", [struct.pack("<I", 1), struct.pack("<I", 2) + b"\0" * 5])
def test_a_malformed_acl_xattr_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a POSIX ACL"):
        decode_acl(raw)
