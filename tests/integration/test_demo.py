"""``make demo`` as a new user meets it: it starts, and the commands it prints run as
written and say what the running guard does."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops both."
START_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo's file guard needs root"),
]


def _printed_commands(banner: str) -> dict[str, str]:
    """``label: command`` lines of the banner, the command cut before its comment."""
    out = {}
    for line in banner.splitlines():
        label, sep, rest = line.strip().partition(":")
        if sep and rest.strip().startswith((".venv/bin/", "cat ")):
            out[label] = rest.strip().split("   (")[0]
    return out


@pytest.fixture
def demo(tmp_path: Path) -> object:
    # A scratch checkout: the demo reads ./policies and writes ./var, and prints
    # .venv/bin/... commands relative to the checkout.
    (tmp_path / "policies").symlink_to(REPO / "policies")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = os.environ | {"PYTHONPATH": f"{REPO / 'protos'}:{REPO}", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if BANNER_END in line:
                break
        banner = "".join(seen)
        assert BANNER_END in banner, banner
        yield tmp_path, banner, env, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(
            [str(Path(sys.executable).parent / "baomi-agent"), "--state-dir",
             str(tmp_path / "var" / "agent"), "guardian", "stop"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip


def test_the_demo_runs_and_its_printed_commands_say_what_the_guard_does(demo: object) -> None:
    cwd, banner, env, proc = demo  # type: ignore[misc]
    commands = _printed_commands(banner)
    assert {"events", "verify", "guarded", "why", "meeting"} <= commands.keys(), banner

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(command), cwd=cwd, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    # root is not in subjects.toml: the guard denies it, and explain, run as printed,
    # judges the same sealed label (no "invalid label" for want of the demo's key).
    guarded = run(commands["guarded"])
    assert guarded.returncode != 0
    assert "Operation not permitted" in guarded.stderr
    why = run(commands["why"])
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith("ALLOW  read"), why.stdout
    assert "invalid label" not in why.stdout
    # The console answers; the record lists the denial and verifies.
    with urllib.request.urlopen("http://127.0.0.1:8080/login", timeout=10) as page:
        assert page.status == 200
    deadline = time.monotonic() + 30
    while True:
        events = run(commands["events"] + " --kind file_access")
        if "budget-2027.xlsx" in events.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert events.returncode == 0, events.stderr
    assert "budget-2027.xlsx" in events.stdout
    # The meeting check as printed runs (its verdict depends on this machine's devices).
    meeting = run(commands["meeting"])
    assert meeting.returncode in (0, 1), meeting.stdout + meeting.stderr
    assert "C0" in meeting.stdout and "signed by demo-host" in meeting.stdout, meeting.stdout
    verify = run(commands["verify"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Stopped as the banner says (Ctrl-C): cleanly.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
