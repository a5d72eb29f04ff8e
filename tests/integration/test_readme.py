"""The README's command sequences, run as written in a scratch directory: the collector
set-up (a PKI, the first account of each role and ``serve`` with the console over TLS),
the enrolment of a real host with the sensors a secret computer runs, and an offline host
(run, enrolment by files, export, import, forget).

Only what cannot run here is rewritten: the directories (/etc/baomi, /var/lib/baomi,
/srv/secret, /mnt/worm) go under the test's own, the 0.0.0.0 ports become free loopback
ones (the enrolled host's collector keeps its ports in a network namespace of its own,
where collector.example is 127.0.0.1), the agent's state directory is given, and the
console's certificate is made with openssl. Every command line is otherwise the README's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.console.web import Client
from tests.procs import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60
T = TypeVar("T")


def _block_after(heading: str) -> str:
    """The first ```sh block after ``heading`` in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    return re.search(r"```sh\n(.*?)```", after, re.DOTALL).group(1)  # type: ignore[union-attr]


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
    ports = {a: free_port() for a in ("0.0.0.0:7443", "0.0.0.0:7444", "0.0.0.0:8443")}
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


HOST = "ws-finance-01"
NOBODY = 65534  # a uid no subject in the shipped subjects.toml has
SENSORS = {"files", "usb", "network", "process"}  # what the README's run line starts


@pytest.mark.root
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("setpriv") is None,
    reason="needs root, ip and setpriv (a network namespace, the file guard's fanotify)",
)
def test_the_readme_host_enrolment_runs_as_written() -> None:
    # Not under pytest's tmp_path (mode 0700): another uid must reach the protected tree.
    root = Path(tempfile.mkdtemp(prefix="baomi-readme-"))
    root.chmod(0o755)
    for d in ("etc", "var", "secret", "worm"):
        (root / d).mkdir(mode=0o755)
    _policies_for_this_host(root / "etc" / "policies", root / "apps")
    state = root / "var" / "host"
    store = f"sqlite:///{root / 'var' / 'collector.db'}"  # the README's, read from anywhere
    # Collector and agent share a network namespace of their own: the run line brings
    # links down and deletes default routes, and there the README's ports are free, so
    # they stay; the collector's name is its loopback address there.
    block = (
        _local(_block_after("### Enrolling a real host"), root, {})
        .replace("collector.example", "127.0.0.1")
        .replace("/srv/secret", str(root / "secret"))
        .replace("/mnt/worm", str(root / "worm"))
        .replace("baomi-agent ", f"baomi-agent --state-dir {state} ")
    )
    pki, serve, token, enroll, run = _commands(block)
    assert serve.startswith("baomi-collector serve") and "TOKEN" in enroll, block
    ns = f"baomi-readme-{uuid.uuid4().hex[:8]}"
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    children: list[subprocess.Popen[str]] = []

    def in_ns(command: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "bash", "-ec", command], cwd=root, env=env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (command, done.stderr)
        return done.stdout

    def start(command: str, log: str) -> subprocess.Popen[str]:
        with (root / log).open("w") as out:  # a file: a full pipe would stall a daemon
            child = subprocess.Popen(
                ["ip", "netns", "exec", ns, "bash", "-ec", f"exec {command}"], cwd=root,
                env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        children.append(child)
        return child

    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=60)
        in_ns("ip link set lo up")
        in_ns(pki)
        collector = start(serve, "collector.log")
        _wait(
            lambda: "serving agents" in (root / "collector.log").read_text(),
            collector,
            root / "collector.log",
        )
        issued = in_ns(token).strip()
        assert re.fullmatch(r"\S+", issued), issued  # the output is the token alone
        shutil.copy(root / "etc" / "pki" / "ca.pem", root / "ca.pem")  # "copy ca.pem over"
        assert f"enrolled as {HOST}" in in_ns(enroll.replace("TOKEN", issued))
        secret = root / "secret" / "plan.txt"
        secret.write_text("the plan\n")
        secret.chmod(0o644)  # nothing but the guard keeps another uid out
        in_ns(f"baomi-agent --state-dir {state} label set {secret} --level 机密")

        agent = start(run, "agent.log")
        # A heartbeat after the start one: every sensor has had its time to start.
        status = _wait(lambda: _heartbeat(store, "running"), agent, root / "agent.log")
        health = {s["name"]: s for s in status["sensors"]}
        assert set(health) == SENSORS, health
        for name, sensor in health.items():
            # Healthy, or degraded with the reason (writes on an older kernel).
            assert sensor["state"] == "ok" or (
                sensor["state"] == "degraded" and "policy" not in sensor.get("detail", "")
            ), (name, sensor)
        opened = _as_nobody("cat", str(secret))
        assert opened.returncode != 0 and "Operation not permitted" in opened.stderr, opened
        denial = _wait(lambda: _denial_of(store, secret), agent, root / "agent.log")
        assert denial["reason"] != "no policy loaded", denial
        # No default route but the approved gateway: one through another is deleted
        # (a documentation address on a veth pair, both ends in the namespace).
        in_ns(
            "ip link add baomi-a type veth peer name baomi-b; ip link set baomi-b up; "
            "ip link set baomi-a up; ip address add 192.0.2.2/24 dev baomi-a; "
            "ip route add default via 192.0.2.1"
        )
        route = _wait(lambda: _route_enforced(store, "192.0.2.1"), agent, root / "agent.log")
        assert route.get("violation") and not in_ns("ip route show default"), route
        _wait(
            lambda: (root / "worm" / "baomi.witness").stat().st_size > 0,
            collector,
            root / "collector.log",
        )

        agent.terminate()
        agent.wait(timeout=60)
        in_ns(f"baomi-agent --state-dir {state} guardian stop")  # the README's release
        guarded_seq = status["seq"]
        plain = start(f"baomi-agent --state-dir {state} run", "plain.log")
        status = _wait(
            lambda: _heartbeat(store, "started", after=guarded_seq), plain, root / "plain.log"
        )
        assert status.get("sensors", []) == [], status  # it only reports its health
        assert _as_nobody("cat", str(secret)).stdout == "the plan\n"  # and guards nothing
    finally:
        for child in children:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=60)
        subprocess.run(
            [BIN / "baomi-agent", "--state-dir", state, "guardian", "stop"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _policies_for_this_host(policies: Path, apps: Path) -> None:
    """The shipped policies, the approved programs this host lacks made copies of cat
    (the README's "install those programs or edit the copy"), as the demo does."""
    shutil.copytree(REPO / "policies", policies)
    apps.mkdir(mode=0o755)
    subjects = (policies / "subjects.toml").read_text(encoding="utf-8")
    for program in sorted(set(re.findall(r'"(/usr/bin/[a-z]+)"', subjects))):
        if not Path(program).exists():
            shutil.copy("/usr/bin/cat", apps / Path(program).name)
            subjects = subjects.replace(f'"{program}"', f'"{apps / Path(program).name}"')
    (policies / "subjects.toml").write_text(subjects, encoding="utf-8")


def _wait(probe: Callable[[], T | None], child: subprocess.Popen[str], log: Path) -> T:
    """What ``probe`` returns once it is truthy; the child (logging to ``log``) must keep
    running meanwhile."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            got = probe()
        except FileNotFoundError:
            got = None
        if got:
            return got
        assert child.poll() is None, f"{child.args[-1]} exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"{child.args[-1]}: waited in vain; {log.read_text()}"
        time.sleep(0.5)


def _events(store: str, kind: str) -> list[dict[str, Any]]:
    """The host's stored events of ``kind``, as ``baomi-collector events --json`` lists them."""
    listed = subprocess.run(
        [BIN / "baomi-collector", "events", "--host", HOST, "--store", store, "--kind", kind,
         "--heartbeats", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in listed.stdout.splitlines()]


def _heartbeat(store: str, state: str, after: int = 0) -> dict[str, Any] | None:
    """The newest heartbeat in ``state`` (``started``, ``running``) past seq ``after``."""
    for event in _events(store, "agent_status"):  # newest first
        status = event["agent_status"]
        if status.get("state") == state and int(event["seq"]) > after:
            return dict(status, seq=int(event["seq"]))
    return None


def _denial_of(store: str, path: Path) -> dict[str, Any] | None:
    """The stored refusal of an open of ``path`` by uid NOBODY."""
    for event in _events(store, "file_access"):
        access = event["file_access"]
        if access.get("path") == str(path) and access.get("uid") == NOBODY:
            return access if access.get("decision") == "DECISION_DENY" else None
    return None


def _route_enforced(store: str, gateway: str) -> dict[str, Any] | None:
    """The stored event of a default route through ``gateway`` the agent deleted."""
    for event in _events(store, "network"):
        network = event["network"]
        if network.get("action") == "default_route_add" and network.get("gateway") == gateway:
            return network if network.get("enforced") else None
    return None


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
