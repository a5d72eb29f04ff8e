"""``make demo``: a collector on SQLite and one local agent enrolled to it, on this machine.

Everything lives under ``var/``: the development PKI (var/pki), the store
(var/collector.db) and the agent's state (var/agent). Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

VAR = Path("var")
PKI = VAR / "pki"
STORE = f"sqlite:///{VAR / 'collector.db'}"
AGENT_STATE = VAR / "agent"
LISTEN = "127.0.0.1:7443"
ENROLL = "127.0.0.1:7444"
BIN = Path(sys.executable).parent


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def main() -> int:
    """Start collector and agent; wait for Ctrl-C."""
    collector_cli, agent_cli = str(BIN / "baomi-collector"), str(BIN / "baomi-agent")
    if not (PKI / "ca.key").exists():
        _run(collector_cli, "pki", "init", "--dir", str(PKI))
        print(f"created a development PKI in {PKI}")
    collector = subprocess.Popen(
        [
            collector_cli,
            "serve",
            "--store",
            STORE,
            "--pki",
            str(PKI),
            "--listen",
            LISTEN,
            "--enroll-listen",
            ENROLL,
            "--policies",
            "policies",
        ]
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(1.5)
        if collector.poll() is not None:
            print("the collector did not start; see its log above", file=sys.stderr)
            return 1
        if not (AGENT_STATE / "agent.json").exists():
            token = _run(
                collector_cli, "token", "create", "--host", "demo-host", "--store", STORE
            ).strip()
            _run(
                agent_cli,
                "--state-dir",
                str(AGENT_STATE),
                "enroll",
                "--collector",
                LISTEN,
                "--token",
                token,
                "--ca",
                str(PKI / "ca.pem"),
            )
            print("enrolled the local agent as demo-host")
        agent = subprocess.Popen(
            [agent_cli, "--state-dir", str(AGENT_STATE), "run", "--heartbeat", "10"]
        )
        print(
            "\nBaomi demo is running: collector on "
            f"{LISTEN} (mTLS; enrolment on {ENROLL}), one agent 'demo-host'.\n"
            f"  events:  .venv/bin/baomi-collector events --store {STORE}\n"
            f"  verify:  .venv/bin/baomi-collector audit verify --store {STORE} --pki {PKI}\n"
            "Ctrl-C stops both.\n",
            flush=True,
        )
        while collector.poll() is None and agent.poll() is None:
            time.sleep(0.5)
        print("a process ended; stopping the demo", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the children too; each stops cleanly on its own
    finally:
        for proc in (agent, collector):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print("stopped")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
