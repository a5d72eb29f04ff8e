"""The witness file format: one checkpoint a line, appended, torn tails left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import checkpoint
from collector.store.base import CheckpointRow

ROWS = [
    CheckpointRow(1, 1_000, b'{"heads":{},"prev":"00","v":1}', b"\x01" * 64),
    CheckpointRow(2, 2_000, b'{"heads":{"ws-01":[3,"ab"]},"prev":"11","v":1}', b"\x02" * 64),
]


def test_rows_round_trip_through_an_append_only_file(tmp_path: Path) -> None:
    path = tmp_path / "w"
    for row in ROWS:
        checkpoint.append_witness(path, row)
    assert checkpoint.read_witness(path) == ROWS
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_bytes().count(b"\n") == 2


def test_a_torn_last_line_is_not_a_witnessed_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w"
    checkpoint.append_witness(path, ROWS[0])
    with path.open("ab") as f:
        f.write(checkpoint.witness_line(ROWS[1])[:40])  # a crash in the middle of a write
    assert checkpoint.read_witness(path) == ROWS[:1]


def test_a_damaged_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w"
    checkpoint.append_witness(path, ROWS[0])
    with path.open("ab") as f:
        f.write(b'{"id": 2, "created_us": 1}\n')
    with pytest.raises(checkpoint.WitnessError, match=r":2: not a witnessed checkpoint"):
        checkpoint.read_witness(path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "w").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        checkpoint.append_witness(tmp_path / "w", ROWS[0])
    assert not target.exists()


@pytest.mark.parametrize(
    "line",
    [
        b'{"id": 1e999, "created_us": 1, "body": "{}", "signature": "00"}',  # int(inf)
        b'{"id": 2, "created_us": -1e400, "body": "{}", "signature": "00"}',
        b"[" * 100_000,  # deeper than the JSON decoder recurses
    ],
)
def test_a_damaged_line_that_broke_the_reader_is_named(tmp_path: Path, line: bytes) -> None:
    """Found while writing the fuzz target of audit verify (fuzz/targets.py, chain):
    these escaped read_witness as OverflowError and RecursionError, and audit verify
    failed with a traceback instead of reporting the witness file as damaged."""
    path = tmp_path / "w"
    checkpoint.append_witness(path, ROWS[0])
    with path.open("ab") as f:
        f.write(line + b"\n")
    with pytest.raises(checkpoint.WitnessError, match=r":2: not a witnessed checkpoint"):
        checkpoint.read_witness(path)
