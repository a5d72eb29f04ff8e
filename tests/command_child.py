"""A long-lived child process whose opens a test drives one command at a time.

The file guard answers repeats of an access by the *same process* from memory, so
tests of "no stale answer" need one process that opens, waits while the test changes
something (policy, label, its own uid), and opens again.

Commands, one a line: ``open PATH`` -> ``ok`` or the errno name; ``setuid UID`` ->
``done`` (no exec: the process stays the same); ``exec PATH`` -> becomes ``cat PATH``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHILD_TIMEOUT = 10  # seconds to wait for a killed child

COMMAND_CHILD = """
import errno, os, sys
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "open":
        try:
            os.close(os.open(arg, os.O_RDONLY))
            print("ok", flush=True)
        except OSError as e:
            print(errno.errorcode[e.errno], flush=True)
    elif cmd == "setuid":
        u = int(arg)
        os.setresgid(u, u, u); os.setgroups([]); os.setresuid(u, u, u)
        print("done", flush=True)
    elif cmd == "exec":
        os.execv("/bin/cat", ["cat", arg])
"""


class CommandChild:
    """``python -c COMMAND_CHILD``, as ``uid`` (or the test's own uid)."""

    def __init__(self, python: str, uid: int | None = None) -> None:
        user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            [python, "-c", COMMAND_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            **user,  # type: ignore[call-overload]
        )

    def ask(self, command: str) -> str:
        """Send one command; its one-line answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def opens(self, path: Path, times: int) -> list[str]:
        """Open ``path`` ``times`` times; the answer of each."""
        return [self.ask(f"open {path}") for _ in range(times)]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(CHILD_TIMEOUT)


@pytest.fixture
def children() -> Iterator[Callable[..., CommandChild]]:
    """Start CommandChilds; each is killed at teardown."""
    made: list[CommandChild] = []

    def start(python: str, uid: int | None = None) -> CommandChild:
        made.append(CommandChild(python, uid))
        return made[-1]

    yield start
    for c in made:
        c.close()
