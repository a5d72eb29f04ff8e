"""The README's command sequences, run as written in a scratch directory: the collector
set-up (a PKI, the first account of each role and ``serve`` with the console over TLS)
and an offline host (run, enrolment by files, export, import, forget).

Only what cannot run here is rewritten: the directories (/etc/baomi, /var/lib/baomi) go
under the test's own, the 0.0.0.0 ports become free loopback ones, and the console's
certificate is made with openssl. Every command line is otherwise the README's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.console.web import Client

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60


def _block_after(heading: str) -> str:
    """The first ```sh block after ``heading`` in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    return re.search(r"```sh\n(.*?)```", after, re.DOTALL).group(1)  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local(block: str, root: Path, ports: dict[str, int]) -> str:
    block = block.replace("/etc/baomi", str(root / "etc")).replace(
        "/var/lib/baomi", str(root / "var")
    )
    for address, port in ports.items():
        block = block.replace(address, f"127.0.0.1:{port}")
    return block


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_readme_collector_with_console_and_first_accounts_runs_as_written(
    tmp_path: Path,
) -> None:
    ports = {a: _free_port() for a in ("0.0.0.0:7443", "0.0.0.0:7444", "0.0.0.0:8443")}
    (tmp_path / "etc").mkdir()
    (tmp_path / "var").mkdir()
    shutil.copytree(REPO / "policies", tmp_path / "etc" / "policies")
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    # The PKI, as "Enrolling a real host" makes it.
    pki_line = next(
        line for line in _block_after("### Enrolling a real host").splitlines()
        if line.startswith("baomi-collector pki init")
    )  # fmt: skip
    subprocess.run(
        ["bash", "-ec", _local(pki_line, tmp_path, ports)], check=True, env=env, timeout=60
    )
    # The console's certificate (the README leaves making it to the reader).
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", "console.key", "-out", "console.pem"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    block = _local(_block_after("### Console, accounts"), tmp_path, ports)
    setup, serve = block.split("baomi-collector serve", 1)
    made = subprocess.run(
        ["bash", "-ec", setup], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    passwords = dict(re.findall(r"created (\S+) \(\w+\); password: (\S+)", made.stdout))
    assert set(passwords) == {"admin", "secofficer", "auditor1"}, made.stdout
    server = subprocess.Popen(
        ["bash", "-ec", f"{setup.splitlines()[0]}\nexec baomi-collector serve{serve}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"https://127.0.0.1:{ports['0.0.0.0:8443']}"
        context = ssl.create_default_context(cafile=str(tmp_path / "console.pem"))
        client = Client(base, ssl_context=context)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                page = client.get("/login")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the console did not answer"
                time.sleep(0.5)
        assert page.status == 200
        assert all(c.name.startswith("__Host-") for c in client.jar)  # TLS: __Host- cookies
        for name, password in passwords.items():
            who = Client(base, ssl_context=context)
            assert who.login(name, password).status == 303, name
        with socket.create_connection(("127.0.0.1", ports["0.0.0.0:7443"]), timeout=10):
            pass  # and the agents' port listens
    finally:
        server.terminate()
        server.wait(timeout=60)


def _commands(block: str) -> list[str]:
    """The block's command lines: continuations joined, comments and blank lines left out."""
    joined = block.replace("\\\n", " ")
    lines = (line.split("  #", 1)[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the file guard's fanotify)")
def test_the_readme_offline_host_steps_run_as_written(tmp_path: Path) -> None:
    for d in ("etc", "var", "stick", "secret"):
        (tmp_path / d).mkdir()
    shutil.copytree(REPO / "policies", tmp_path / "etc" / "policies")
    subprocess.run(
        [BIN / "baomi-collector", "pki", "init", "--dir", tmp_path / "etc" / "pki"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    state = tmp_path / "var" / "host"
    # The host's state goes under the test's directory too (the README uses the default).
    block = (
        _local(_block_after("### An offline host"), tmp_path, {})
        .replace("/media/stick", str(tmp_path / "stick"))
        .replace("/srv/secret", str(tmp_path / "secret"))
        .replace("baomi-agent ", f"baomi-agent --state-dir {state} ")
    )
    setting, *commands = _commands(block)
    assert setting.startswith("S=")
    agent: subprocess.Popen[str] | None = None
    said: dict[str, str] = {}
    try:
        for command in commands:
            if command.endswith("&"):  # the agent, running while the rest is done
                agent = subprocess.Popen(
                    ["bash", "-ec", f"{setting}\nexec {command.removesuffix('&')}"],
                    cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                _wait_recording(state, agent)
                continue
            seq = re.search(r"--forget-through (\d+)", said.get("import", ""))
            assert seq is not None or "SEQ" not in command, said
            line = command.replace("SEQ", seq.group(1)) if seq is not None else command
            done = subprocess.run(
                ["bash", "-ec", f"{setting}\n{line}"], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, (command, done.stderr)
            said[command.split()[1] if "collector" in command else command.split()[3]] = done.stdout
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=60)
        subprocess.run(
            [BIN / "baomi-agent", "--state-dir", state, "guardian", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    # Each did what the README says.
    assert "ws-secret-07" in said["report"] and "hash chain: unbroken" in said["report"]
    assert "agent_status" not in said["events"]  # heartbeats folded
    assert re.search(r"host ws-secret-07: \d+ events stored", said["import"]), said["import"]
    assert "confirmed imported" in said["export"]  # the last export line: --forget-through
    assert (state / "host.pem").exists() and not (tmp_path / "stick" / "host.key").exists()


def _wait_recording(state: Path, agent: subprocess.Popen[str]) -> None:
    """Until the offline agent has spooled its start."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        listed = subprocess.run(
            [BIN / "baomi-agent", "--state-dir", state, "events", "--heartbeats"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if "started" in listed.stdout:
            return
        assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
        assert time.monotonic() < deadline, "the offline agent did not start"
        time.sleep(0.5)
