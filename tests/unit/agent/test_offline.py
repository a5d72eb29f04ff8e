# Chinese text uses full-width punctuation, as Chinese typesetting requires:
# ruff: noqa: RUF001
"""The offline host's own side: its state made on first run, exports of what is new or
of everything unconfirmed, forgetting only what was exported, and its local record."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from baomi import exportfile
from baomi.config import parse_with_config
from baomi.v1 import events_pb2

from agent import localrecord, offline
from agent.cli import build_parser
from agent.core import Agent, AgentConfig
from agent.spool import Spool

HOST = "ws-09"


def _record(state: Path, *events: events_pb2.Event) -> None:
    spool = Spool(state / "spool.db")
    try:
        spool.append(list(events))
    finally:
        spool.close()


def _heartbeat() -> events_pb2.Event:
    return events_pb2.Event(agent_status=events_pb2.AgentStatus(state="running"))


def _denied(path: str) -> events_pb2.Event:
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_MEDIUM,
        file_access=events_pb2.FileAccess(
            path=path, action="read", uid=2002, decision=events_pb2.DECISION_DENY, reason="read up"
        ),
    )


@pytest.fixture(autouse=True)
def _language_from_lang(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LC_ALL", "LC_MESSAGES"):  # these would outrank LANG
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    assert offline.prepare(state, HOST) == HOST
    return state


def _certified(state: Path) -> None:
    # The agent keeps the certificate as it is; the collector checks it on import.
    (state / "host.pem").write_text("-----BEGIN CERTIFICATE-----\n")


def test_first_run_makes_the_spool_and_a_private_host_key(state: Path) -> None:
    assert stat.S_IMODE((state / "host.key").stat().st_mode) == 0o600
    assert offline.host_id_of(state) == HOST
    assert offline.prepare(state) == HOST  # a second start keeps it
    with pytest.raises(offline.OfflineError, match="records as 'ws-09'"):
        offline.prepare(state, "ws-10")


def test_an_unenrolled_host_cannot_export_and_loses_nothing(state: Path) -> None:
    _record(state, _heartbeat())
    with pytest.raises(offline.OfflineError, match="enrol it by file first"):
        offline.export(state, state.parent / "e.json")
    assert not (state.parent / "e.json").exists()
    assert len(Spool(state / "spool.db").read_after(0, 100)) == 1


def test_exports_carry_what_is_new_and_again_everything_unconfirmed(state: Path) -> None:
    _certified(state)
    _record(state, _heartbeat(), _denied("/srv/a"))
    first = offline.export(state, state.parent / "1.json")
    assert (first.first_seq, first.last_seq) == (1, 3)  # the export's own event included
    _record(state, _denied("/srv/b"))
    second = offline.export(state, state.parent / "2.json")
    assert (second.first_seq, second.last_seq) == (4, 5)
    again = offline.export(state, state.parent / "3.json", again=True)
    assert (again.first_seq, again.last_seq) == (1, 6)
    read = exportfile.loads((state.parent / "3.json").read_bytes())
    assert exportfile.chain_problem(read) is None
    recorded = events_pb2.Event.FromString(read.bodies[-1]).console_action
    assert (recorded.action, recorded.detail) == ("export", "seq 1..6 (this event included)")


def test_only_what_was_exported_can_be_forgotten(state: Path) -> None:
    _certified(state)
    _record(state, _heartbeat(), _heartbeat())
    with pytest.raises(offline.OfflineError, match="never exported"):
        offline.forget_through(state, 1)
    offline.export(state, state.parent / "e.json")
    with pytest.raises(offline.OfflineError, match="seq 4 was never exported"):
        offline.forget_through(state, 4)
    assert offline.forget_through(state, 3) == 3
    assert offline.forget_through(state, 2) == 0  # already confirmed
    spool = Spool(state / "spool.db")
    assert spool.acked[0] == 3 and spool.pending() == 2  # the two forget events


def test_events_fold_heartbeats_and_speak_the_language(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(state, _heartbeat(), _denied("/srv/a"), _heartbeat())

    def listed(**options: object) -> list[str]:
        values: dict[str, object] = {"limit": 100, "kind": None, "heartbeats": False}
        return localrecord.list_events(state, **{**values, "as_json": False, **options})  # type: ignore[arg-type]

    monkeypatch.setenv("LANG", "C")
    lines = listed()
    assert lines[0].split() == ["TIME", "SEQ", "SEVERITY", "KIND", "DETAIL"]
    assert len(lines) == 2 and "#2" in lines[1] and "file_access" in lines[1]
    assert len(listed(heartbeats=True)) == 4
    assert len(listed(kind="agent_status")) == 3  # asked for: not folded
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    lines = listed()
    assert lines[0].split() == ["时间", "序号", "严重程度", "类型", "详情"]
    assert "文件访问" in lines[1] and "中" in lines[1]
    docs = [json.loads(x) for x in listed(as_json=True)]
    assert [d["seq"] for d in docs] == ["2"]  # JSON does not depend on the language
    assert docs[0]["file_access"]["reason"] == "read up"


def test_the_report_counts_denials_and_checks_the_chain(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(state, _heartbeat(), _denied("/srv/a"), _denied("/srv/b"))
    monkeypatch.setenv("LANG", "C")
    text = "\n".join(localrecord.host_report(state))
    assert f"Host inspection record: {HOST}" in text
    assert "hash chain: unbroken" in text
    assert "denied accesses (2)" in text and "/srv/b: read up" in text
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    text = "\n".join(localrecord.host_report(state))
    assert "涉密计算机检查记录" in text and "拒绝的访问（2 次）" in text


def test_no_state_directory_says_which_to_give(tmp_path: Path) -> None:
    with pytest.raises(offline.AgentError, match="--state-dir DIR"):
        localrecord.list_events(tmp_path, limit=1, kind=None, heartbeats=False, as_json=False)


def test_offline_comes_from_the_config_file_too(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[run]\noffline = true\nhost-id = "ws-09"\n', encoding="utf-8")
    args = parse_with_config(build_parser(), ["--config", str(config), "run"], tmp_path / "none")
    assert args.offline and args.host_id == HOST
    plain = parse_with_config(build_parser(), ["run"], tmp_path / "none")
    assert not plain.offline  # connected unless asked


def test_a_host_enrolled_by_file_is_told_to_run_offline(tmp_path: Path) -> None:
    state = tmp_path / "state"
    offline.prepare(state, HOST)
    (state / "agent.json").write_text(json.dumps({"host_id": HOST, "collector": ""}))
    for name in ("host.pem", "ca.pem", "signing.pub"):
        (state / name).write_text("PEM")
    with pytest.raises(offline.AgentError, match="run it with --offline"):
        Agent(AgentConfig(state_dir=state))
    agent = Agent(AgentConfig(state_dir=state, offline=True))
    try:
        assert agent.host_id == HOST and agent.stream is None
    finally:
        agent.spool.close()
        agent.journal.close()
