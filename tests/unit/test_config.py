"""Configuration files: every option has a key, the command line overrides, and a bad
file is refused naming the file, the line and what to fix."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from baomi.config import ConfigFileError, parse_with_config

from agent.cli import build_parser as agent_parser
from collector.cli import build_parser as collector_parser

REPO = Path(__file__).resolve().parents[2]
NONE = Path("/nonexistent/baomi.toml")


def _agent(tmp_path: Path, text: str, *argv: str) -> argparse.Namespace:
    config = tmp_path / "agent.toml"
    config.write_text(text, encoding="utf-8")
    return parse_with_config(agent_parser(), ["--config", str(config), *argv], NONE)


def _refused(tmp_path: Path, text: str, *argv: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        _agent(tmp_path, text, *(argv or ("run",)))
    return info.value


def _shipped(name: str, tmp_path: Path) -> str:
    """A copy of a shipped example (the checkout's own directories may be group-writable,
    which a configuration file's may not)."""
    copy = tmp_path / name
    copy.write_bytes((REPO / "deploy" / "etc" / name).read_bytes())
    return str(copy)


def test_the_shipped_agent_config_runs_the_sensors_a_secret_computer_needs(
    tmp_path: Path,
) -> None:
    args = parse_with_config(
        agent_parser(), ["--config", _shipped("agent.toml", tmp_path), "run"], NONE
    )
    assert args.command == "run"
    assert args.protect == [Path("/srv/secret")]
    assert (args.usb, args.network, args.enforce_network, args.process) == (True,) * 4
    assert args.gateway == ["10.0.0.1"]
    assert args.state_dir == Path("/var/lib/baomi-agent")


def test_the_shipped_collector_config_sets_store_everywhere_and_serve_options(
    tmp_path: Path,
) -> None:
    config = _shipped("collector.toml", tmp_path)
    serve = parse_with_config(collector_parser(), ["--config", config, "serve"], NONE)
    assert serve.store == "sqlite:////var/lib/baomi-collector/collector.db"  # absolute
    assert serve.console == "0.0.0.0:8443" and serve.pki == Path("/etc/baomi/pki")
    events = parse_with_config(collector_parser(), ["--config", config, "events"], NONE)
    assert events.store == serve.store  # a top-level key reaches every command with it


def test_the_command_line_overrides_the_file(tmp_path: Path) -> None:
    text = 'state-dir = "/from/file"\n[run]\nprotect = ["/a", "/b"]\nheartbeat = 5\nusb = true\n'
    args = _agent(tmp_path, text, "run")
    assert (args.state_dir, args.protect, args.heartbeat) == (Path("/from/file"), [
        Path("/a"), Path("/b")], 5.0)  # fmt: skip
    args = _agent(
        tmp_path, text, "--state-dir", "/cli", "run", "--protect", "/c", "--heartbeat", "7"
    )
    assert (args.state_dir, args.protect, args.heartbeat) == (Path("/cli"), [Path("/c")], 7.0)
    assert args.usb is True


def test_a_required_option_may_come_from_the_file(tmp_path: Path) -> None:
    text = '[enroll]\ncollector = "c.example:7443"\ntoken = "t"\nca = "/etc/baomi/ca.pem"\n'
    args = _agent(tmp_path, text, "enroll")
    assert (args.collector, args.token, args.ca) == (
        ["c.example:7443"],
        "t",
        Path("/etc/baomi/ca.pem"),
    )


def test_several_collectors_from_the_file_and_the_command_line_replaces_them(
    tmp_path: Path,
) -> None:
    text = '[run]\ncollector = ["a.example:7443", "b.example:7443"]\n'
    assert _agent(tmp_path, text, "run").collector == ["a.example:7443", "b.example:7443"]
    args = _agent(tmp_path, text, "run", "--collector", "c.example:7443")
    assert args.collector == ["c.example:7443"]


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ('[run]\nprotect = ["/a"]\nusbb = true\n', 3, "usbb: run has no option --usbb"),
        ("[run]\nusb = 1\n", 2, "usb: a switch: write usb = true or usb = false"),
        ('[run]\nprotect = "/a"\n', 2, 'repeatable: write a list, protect = ["..."]'),
        ('[run]\nheartbeat = "soon"\n', 2, "heartbeat: 'soon' is not accepted"),
        ("nonsense = 1\n", 1, "nonsense: the program has no option --nonsense"),
        ("[runn]\nusb = true\n", 1, "[runn]: the program has no subcommand 'runn'"),
        ("[run]\nheartbeat = [1, 2]\n", 2, "give one value"),
        ("[run\n", 1, "not TOML"),
        ('config = "/other.toml"\n', 1, "a file cannot name another"),
    ],
)
def test_a_bad_file_is_refused_with_file_line_and_reason(
    tmp_path: Path, text: str, line: int, why: str
) -> None:
    e = _refused(tmp_path, text)
    assert e.file == tmp_path / "agent.toml"
    assert e.line == line, str(e)
    assert why in e.reason, str(e)


def test_choices_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text('[user.grant]\nrole = "root"\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match=r"collector.toml:2: role: 'root' is not one of"):
        parse_with_config(collector_parser(), ["--config", str(config), "user", "grant", "x"], NONE)


def test_an_explicit_missing_file_is_an_error_the_default_one_is_optional(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigFileError, match="cannot read it"):
        parse_with_config(agent_parser(), ["--config", str(tmp_path / "no.toml"), "run"], NONE)
    assert parse_with_config(agent_parser(), ["run"], tmp_path / "absent.toml").command == "run"


def test_the_cli_reports_a_bad_file_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    config = tmp_path / "agent.toml"
    config.write_text('[run]\nusb = "yes"\n', encoding="utf-8")
    assert main(["--config", str(config), "run"]) == 2
    assert f"baomi-agent: {config}:2: usb: a switch" in capsys.readouterr().err


def test_a_file_others_could_write_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[run]\nusb = true\n", encoding="utf-8")
    config.chmod(0o666)
    with pytest.raises(ConfigFileError, match=r"writable by group or others \(mode 0666\)"):
        parse_with_config(agent_parser(), ["--config", str(config), "run"], NONE)
    config.chmod(0o644)
    tmp_path.chmod(0o777)  # a directory above it, writable by all and not sticky
    try:
        with pytest.raises(ConfigFileError, match=f"{tmp_path} is writable by group or others"):
            parse_with_config(agent_parser(), ["--config", str(config), "run"], NONE)
    finally:
        tmp_path.chmod(0o700)
    if os.geteuid() != 0:
        return  # giving a file away needs root
    os.chown(config, 4242, 4242)
    with pytest.raises(ConfigFileError, match="is owned by uid 4242"):
        parse_with_config(agent_parser(), ["--config", str(config), "run"], NONE)
