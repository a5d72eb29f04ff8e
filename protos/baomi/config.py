"""Configuration files for both programs: every command-line option has a key.

``/etc/baomi/agent.toml`` and ``/etc/baomi/collector.toml`` (or ``--config PATH``) hold
the options a deployment always passes, under their long names without the dashes::

    state-dir = "/var/lib/baomi"      # top level: every command that has the option

    [run]                             # a table: that subcommand only
    protect = ["/srv/secret"]         # a repeatable option takes a list
    usb = true                        # a switch takes true or false

    [meeting.check]                   # a subcommand's subcommand
    rooms = "/etc/baomi/rooms.toml"

The command line overrides the file (a repeatable option given on the command line
replaces the file's list). A key no command has, a value of the wrong type or one the
option refuses is an error naming the file, the line and what to fix; nothing runs
with half a configuration.
"""

from __future__ import annotations

import argparse
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi.tomllines import TomlLines, error_line

CONFIG_OPTION = "--config"


class ConfigFileError(ValueError):
    """A configuration file that cannot be used: file, line and reason."""

    def __init__(self, file: Path, line: int, reason: str) -> None:
        self.file, self.line, self.reason = file, line, reason
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}")


class AppendOrOne(argparse._AppendAction):
    """A repeatable option whose file value may also be one string (``collector =
    "a:7443"`` as well as ``collector = ["a:7443", "b:7443"]``): for options that were
    single-valued before, so that existing files keep working."""


class _FromConfig(list[Any]):
    """A repeatable option's list from the file: told apart after parsing, so that the
    command line's own values replace it instead of being appended to it."""


@dataclass
class _Applied:
    """The repeatable options' lists a file set: (dest, list)."""

    lists: list[tuple[str, _FromConfig]] = field(default_factory=list)


def add_config_option(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--config PATH`` on the program's top-level parser."""
    parser.add_argument(
        CONFIG_OPTION,
        type=Path,
        metavar="PATH",
        help=f"configuration file; every option has a key (default {default}, used if "
        "it exists; the command line overrides it)",
    )


def parse_with_config(
    parser: argparse.ArgumentParser, argv: list[str], default: Path
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the configuration file's values as defaults."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(CONFIG_OPTION, type=Path)
    given = pre.parse_known_args(argv)[0].config
    path = given if given is not None else default
    applied = _Applied()
    if given is not None or path.exists():
        apply_file(parser, path, applied)
    args = parser.parse_args(argv)
    for dest, original in applied.lists:
        value = getattr(args, dest, None)
        if isinstance(value, list) and value is not original and len(value) > len(original):
            setattr(args, dest, list(value[len(original) :]))  # the command line's own
    return args


def apply_file(
    parser: argparse.ArgumentParser, path: Path, applied: _Applied | None = None
) -> None:
    """Set the defaults of ``parser`` and its subcommands from the file at ``path``."""
    try:
        _check_trusted(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(path, 0, f"cannot read it: {e}") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(path, error_line(e), f"not TOML: {e}") from e
    _apply_table(parser, doc, (), path=path, lines=TomlLines(text), applied=applied or _Applied())


def _check_trusted(path: Path) -> None:
    """Refuse a file that someone other than root or this user could have written: the
    file and every directory above it owned by one of them and not writable by group or
    others (a sticky directory such as /tmp excepted), as sshd's StrictModes. A guard
    configured by whoever can write its file guards nothing."""
    me = os.geteuid()
    real = Path(os.path.realpath(path))
    for p in (real, *real.parents):
        st = p.stat()
        is_dir = stat.S_ISDIR(st.st_mode)
        if st.st_uid not in (0, me):
            raise ConfigFileError(
                path, 0, f"{p} is owned by uid {st.st_uid}: only root (or uid {me}) may own "
                "a configuration file and the directories above it",
            )  # fmt: skip
        sticky = is_dir and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky:
            raise ConfigFileError(
                path, 0, f"{p} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): chmod go-w {p}",
            )  # fmt: skip


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    for action in parser._actions:
        if f"--{key}" in action.option_strings:
            return action
    return None


def _everywhere(parser: argparse.ArgumentParser, key: str) -> list[tuple[Any, argparse.Action]]:
    """Every (parser, action) of the tree that has ``--key``."""
    found = []
    action = _option(parser, key)
    if action is not None:
        found.append((parser, action))
    for sub in _subcommands(parser).values():
        found += _everywhere(sub, key)
    return found


def _apply_table(
    parser: argparse.ArgumentParser,
    table: dict[str, Any],
    where: tuple[str, ...],
    *,
    path: Path,
    lines: TomlLines,
    applied: _Applied,
) -> None:
    subs = _subcommands(parser)
    command = " ".join(where) or "the program"
    for key, value in table.items():
        if isinstance(value, dict):
            line = lines.table(*where, key)
            if key not in subs:
                known = ", ".join(sorted(subs)) or "none"
                raise ConfigFileError(
                    path, line, f"[{'.'.join((*where, key))}]: {command} has no subcommand "
                    f"{key!r} (its subcommands: {known})",
                )  # fmt: skip
            _apply_table(subs[key], value, (*where, key), path=path, lines=lines, applied=applied)
            continue
        line = lines.key(lines.table(*where) if where else 0, key)
        if key == CONFIG_OPTION[2:]:
            raise ConfigFileError(path, line, "config: a file cannot name another")
        # At the top level a key sets the option wherever a command has it (store for
        # every collector command); in a table, only that subcommand's.
        targets = _everywhere(parser, key) if not where else []
        if where and (action := _option(parser, key)) is not None:
            targets = [(parser, action)]
        if not targets:
            raise ConfigFileError(
                path, line, f"{key}: {command} has no option --{key} (see its --help)"
            )
        for target, action in targets:
            converted = _convert(action, key, value, path, line)
            if isinstance(converted, _FromConfig):
                applied.lists.append((action.dest, converted))
            target.set_defaults(**{action.dest: converted})
            action.required = False  # the file gives it


def _convert(action: argparse.Action, key: str, value: Any, path: Path, line: int) -> Any:
    def fail(reason: str) -> ConfigFileError:
        return ConfigFileError(path, line, f"{key}: {reason}")

    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise fail(f"a switch: write {key} = true or {key} = false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else None
        if isinstance(action, AppendOrOne) and isinstance(value, str):
            items = [value]
        if items is None:
            raise fail(f'repeatable: write a list, {key} = ["..."]')
        return _FromConfig(_scalar(action, key, v, fail) for v in items)
    if isinstance(action, argparse._StoreAction) and action.nargs is None:
        return _scalar(action, key, value, fail)
    raise fail("not settable in a configuration file")


def _scalar(action: argparse.Action, key: str, value: Any, fail: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise fail(f"give one value (a string or a number), not {type(value).__name__}")
    text = str(value)
    convert = action.type if callable(action.type) else str
    try:
        converted = convert(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise fail(f"{text!r} is not accepted: {e}") from e
    if action.choices is not None and converted not in action.choices:
        raise fail(f"{text!r} is not one of {', '.join(map(str, action.choices))}")
    return converted
