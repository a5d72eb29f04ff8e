"""``serve --metrics-token-file``: a token that is missing, short or not text is a
configuration error that says how to make one, before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import cli
from collector.console.server import read_metrics_token
from collector.errors import CollectorError, ConfigError


def test_a_good_token_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a" * 64 + "\n")
    assert read_metrics_token(path) == "a" * 64


@pytest.mark.parametrize("content", [b"", b"short-token\n", b"\xff" * 40, "机密".encode() * 10])
def test_a_weak_or_unreadable_token_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="metrics token"):
        read_metrics_token(path)
    with pytest.raises(ConfigError, match="cannot read the metrics token file"):
        read_metrics_token(tmp_path / "missing")


def test_the_token_needs_the_console(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--store", f"sqlite:///{tmp_path}/c.db", "--metrics-token-file", "t"]
    )
    with pytest.raises(CollectorError, match="need --console"):
        args.func(args)
