"""The agent's identity files (key, certificates, host record) are written whole or
not at all: a crash or a pulled stick mid-write never leaves a cut key behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import identity
from agent.identity import write_whole


def test_a_file_is_written_whole_with_its_mode(tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    write_whole(key, b"-----BEGIN PRIVATE KEY-----\n", 0o600)
    assert key.read_bytes() == b"-----BEGIN PRIVATE KEY-----\n"
    assert key.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.key"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_scrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = tmp_path / "host.pem"
    cert.write_bytes(b"old certificate\n")

    def disk_gone(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(identity.os, "fsync", disk_gone)
    with pytest.raises(OSError, match="Input/output"):
        write_whole(cert, b"new certif", 0o644)
    assert cert.read_bytes() == b"old certificate\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.pem"]


def test_a_rewrite_replaces_the_file_rather_than_writing_into_it(tmp_path: Path) -> None:
    """A reader holding the old file open still reads it whole."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"old ca\n")
    with ca.open("rb") as reader:
        write_whole(ca, b"new ca\n", 0o644)
        assert reader.read() == b"old ca\n"
    assert ca.read_bytes() == b"new ca\n"
    assert not (tmp_path / ".ca.pem.tmp").exists()
