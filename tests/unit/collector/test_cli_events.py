"""``baomi-collector events`` as a subprocess over a real SQLite store, in zh_CN and C."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from collector.store.base import EventRow
from collector.store.sqlite import SQLiteStore
from tests.cells import ZH, C, cell_at, locale_env

REPO = Path(__file__).resolve().parents[3]
CLI_TIMEOUT_S = 60  # one run of the CLI
T0 = 1_796_000_000_000_000  # an event time, microseconds since the epoch


def _event(host: str, seq: int, severity: int, **kind: object) -> EventRow:
    event = events_pb2.Event(host_id=host, seq=seq, severity=severity, **kind)
    body = event.SerializeToString(deterministic=True)
    which = event.WhichOneof("kind") or ""
    time_us = T0 + seq * 1_000_000
    return EventRow(
        host, seq, which, severity, time_us, time_us, hashlib.sha256(body).digest(), body
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A store with events of two hosts whose names differ in length and script."""
    path = tmp_path / "events.db"
    s = SQLiteStore(path)
    try:
        s.append(
            [
                _event(
                    "pc-1",
                    1,
                    events_pb2.SEVERITY_HIGH,
                    device=events_pb2.Device(name="机密U盘", port="1-2"),
                ),
                _event(
                    "pc-1",
                    2,
                    events_pb2.SEVERITY_INFO,
                    file_access=events_pb2.FileAccess(path="/secret/预算.xlsx", action="read"),
                ),
            ]
        )
        s.append(
            [
                _event(
                    "财务部-终端-0042",
                    10,
                    events_pb2.SEVERITY_CRITICAL,
                    tamper=events_pb2.Tamper(kind="unclean_stop"),
                )
            ]
        )
    finally:
        s.close()
    return f"sqlite:///{path}"


def _events(store: str, lang: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "collector.cli", "events", "--store", store, *args],
        cwd=REPO,
        env=locale_env(lang),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_listing_speaks_the_locales_language_json_does_not(store: str) -> None:
    zh, c = _events(store, ZH), _events(store, C)
    assert _events(store, ZH, "--json") == _events(store, C, "--json")
    zh_lines, c_lines = zh.splitlines(), c.splitlines()
    assert zh_lines[0].split() == ["时间", "终端", "序号", "严重程度", "类型", "详情"]
    assert c_lines[0].split() == ["TIME", "HOST", "SEQ", "SEVERITY", "KIND", "DETAIL"]
    assert len(zh_lines) == len(c_lines) == 4  # the header and three events
    by_seq = {line.split()[2]: line.split() for line in zh_lines[1:]}
    assert by_seq["#1"][3:5] == ["高", "USB设备"]
    assert by_seq["#2"][3:5] == ["信息", "文件访问"]
    assert by_seq["#10"][1:5] == ["财务部-终端-0042", "#10", "严重", "篡改告警"]
    by_seq = {line.split()[2]: line.split() for line in c_lines[1:]}
    assert by_seq["#10"][3:5] == ["critical", "tamper"]
    assert by_seq["#1"][3:5] == ["high", "device"]
    # Event data is shown as it is in both languages.
    assert '"name": "机密U盘"' in zh and '"name": "机密U盘"' in c


def test_listing_columns_start_at_one_cell(store: str) -> None:
    for lines in (_events(store, ZH).splitlines(), _events(store, C).splitlines()):
        header = lines[0].split()
        for column in range(1, 6):  # each column after the time
            starts = {cell_at(lines[0], f" {header[column]}")}
            for line in lines[1:]:
                cell = line.split()[column] if column < 5 else line[line.index("{") :]
                starts.add(cell_at(line, f" {cell}"))
            assert len(starts) == 1, (column, starts, lines)
