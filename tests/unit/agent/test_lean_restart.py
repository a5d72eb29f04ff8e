"""``baomi-agent run`` restarts itself under ``-OO`` (``agent.cli.lean_argv``) with the
interpreter's isolation flags: the Debian package's wrapper runs ``python3 -I``, and a
restart that dropped it would let ``PYTHON*`` variables and the user's site directory
put code into a root program."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import CLI_TIMEOUT_S, REPO

CODE = (
    f"import sys; sys.path[:0] = [{str(REPO / 'protos')!r}, {str(REPO)!r}]\n"
    "sys.argv = ['baomi-agent', '--state-dir', '/s', 'run']\n"
    "from agent.cli import lean_argv\n"
    "print(' '.join(lean_argv()[1:]))\n"
)


@pytest.mark.parametrize(
    ("flags", "carried"),
    [
        ((), []),
        (("-I",), ["-I"]),
        (("-E",), ["-E"]),
        (("-s",), ["-s"]),
        (("-E", "-B"), ["-E", "-B"]),
        (("-I", "-B"), ["-I", "-B"]),
    ],
)
def test_the_restart_keeps_the_interpreters_isolation(
    flags: tuple[str, ...], carried: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, *flags, "-c", CODE],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [*carried, "-P", "-OO", "-m", "agent", "--state-dir", "/s", "run"]
