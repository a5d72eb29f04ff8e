"""Child processes that speak one JSON object per stdout line."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any


class BenchError(Exception):
    """A step of the benchmark failed to run (as opposed to missing a target)."""


class Child:
    """A Python child process; its stderr goes to a log file in the work directory."""

    def __init__(self, name: str, module: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._lines: queue.Queue[str | None] = queue.Queue()
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        if self.proc.stdin is None or self.proc.stdout is None:  # both are pipes
            raise BenchError(f"{name}: no pipes to the child")
        self._stdin = self.proc.stdin
        threading.Thread(
            target=self._pump, args=(self.proc.stdout,), name=f"{name}-stdout", daemon=True
        ).start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def expect(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child prints; BenchError if it ends or stays silent."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name} printed nothing for {timeout:.0f} s") from None
        if line is None:
            self.proc.wait()
            raise BenchError(f"{self.name} exited with {self.proc.returncode}{self.tail()}")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            raise BenchError(f"{self.name}: {doc['error']}{self.tail()}")
        return doc

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        self._stdin.write(line + "\n")
        self._stdin.flush()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL if it will not end; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"\n    | {t}" for t in text)
