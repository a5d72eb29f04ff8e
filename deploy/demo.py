"""``make demo``: a collector on SQLite and one local agent enrolled to it, on this machine.

Everything lives under ``var/``: the development PKI (var/pki), the store
(var/collector.db), the agent's state (var/agent) and a small protected tree of
labelled files (var/demo/secret) guarded with the shipped policy, its paths moved from
/srv/secret to that tree (var/demo/policies). The web console is on
http://127.0.0.1:8080 with one account per role, made on the first run; their
passwords are kept in var/console-accounts.txt (mode 0600, a demo convenience).
Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

VAR = Path("var")
PKI = VAR / "pki"
STORE = f"sqlite:///{VAR / 'collector.db'}"
AGENT_STATE = VAR / "agent"
WITNESS = VAR / "checkpoints.witness"  # in production: on other storage than the database
LISTEN = "127.0.0.1:7443"
ENROLL = "127.0.0.1:7444"
CONSOLE = "127.0.0.1:8080"
ACCOUNTS_FILE = VAR / "console-accounts.txt"
DEMO_ACCOUNTS = (("admin", "sysadmin"), ("secofficer", "secadmin"), ("auditor", "auditor"))
BIN = Path(sys.executable).parent
DEMO = VAR / "demo"
SECRET = DEMO / "secret"
DEMO_MEETING = "m-demo"  # written into var/demo/policies/meetings.toml, an hour ahead
DEMO_FILES = {  # path under SECRET: (level, until, scope)
    "finance/budget-2027.xlsx": ("机密", "2031-06-30", "dept:finance"),
    "shared/notice.txt": ("秘密", None, None),
    "archive/1998-plan.txt": ("绝密", "2020-01-01", None),  # period over: declassified
}


def _prepare_demo_tree(agent_cli: str) -> None:
    """Labelled files and a policy whose paths point at them."""
    policies = DEMO / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    root = SECRET.resolve()
    (policies / "model.conf").write_bytes((Path("policies") / "model.conf").read_bytes())
    # Approved programs are matched by the file they name, which must exist: the
    # shipped ones this host lacks become copies of cat under the demo directory.
    subjects = (Path("policies") / "subjects.toml").read_text(encoding="utf-8")
    bin_dir = (DEMO / "bin").resolve()
    bin_dir.mkdir(parents=True, exist_ok=True)
    for program in sorted(set(re.findall(r'"(/usr/bin/[a-z]+)"', subjects))):
        if not Path(program).exists():
            stand_in = bin_dir / Path(program).name
            shutil.copy("/usr/bin/cat", stand_in)
            subjects = subjects.replace(f'"{program}"', f'"{stand_in}"')
    (policies / "subjects.toml").write_text(subjects, encoding="utf-8")
    # A meeting in room r301 an hour from now, so its pre-meeting check (C0: from two
    # hours before the start) can clear it today.
    start = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)
    (policies / "meetings.toml").write_text(
        f"[meetings.{DEMO_MEETING}]\n"
        'room = "r301"\nlevel = "机密"\n'
        f"start = {start.isoformat()}\n"
        'attendees = ["zhang", "li"]\nrecordings = []\nmaterials = ["JM-DEMO-1"]\n',
        encoding="utf-8",
    )
    shipped = (Path("policies") / "policy.csv").read_text(encoding="utf-8")
    (policies / "policy.csv").write_text(shipped.replace("/srv/secret", str(root)), "utf-8")
    for name, (level, until, scope) in DEMO_FILES.items():
        path = SECRET / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(f"demo content of {name}\n", encoding="utf-8")
        args = [agent_cli, "--state-dir", str(AGENT_STATE), "label", "set", str(path)]
        args += ["--level", level]
        args += ["--until", until] if until else []
        args += ["--scope", scope] if scope else []
        _run(*args)


def _console_accounts(collector_cli: str) -> str:
    """One console account per role, made once; their logins, for the banner."""
    if not ACCOUNTS_FILE.exists():
        lines = []
        for name, role in DEMO_ACCOUNTS:
            try:
                out = _run(collector_cli, "user", "add", name, "--role", role, "--store", STORE)
            except subprocess.CalledProcessError as e:
                # Made by an earlier run whose password file is gone: say so, go on.
                print(e.stderr.strip(), file=sys.stderr)
                lines.append(f"  {role:<9} {name:<11} (password unknown: remove var/ to redo)")
                continue
            password = out.strip().rsplit("password: ", 1)[-1]
            lines.append(f"  {role:<9} {name:<11} {password}")
        ACCOUNTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        ACCOUNTS_FILE.touch(mode=0o600)
        ACCOUNTS_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ACCOUNTS_FILE.read_text(encoding="utf-8")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def main() -> int:
    """Start collector and agent; wait for Ctrl-C."""
    collector_cli, agent_cli = str(BIN / "baomi-collector"), str(BIN / "baomi-agent")
    _prepare_demo_tree(agent_cli)
    if not (PKI / "ca.key").exists():
        _run(collector_cli, "pki", "init", "--dir", str(PKI))
        print(f"created a development PKI in {PKI}")
    logins = _console_accounts(collector_cli)
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
            str(DEMO / "policies"),
            "--console",
            CONSOLE,
            "--reports-dir",
            str(VAR / "reports"),
            "--unit",
            "演示单位",
            "--witness",
            str(WITNESS),
        ]
    )
    agent: subprocess.Popen[bytes] | None = None
    cabinet: subprocess.Popen[bytes] | None = None
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
        # The meeting room's shielding cabinet, simulated on the address policies/rooms.toml
        # gives room r301 (a powered, closed cabinet holding two phones).
        cabinet = subprocess.Popen(
            [str(BIN / "baomi-cabinet-sim"), "--listen", "127.0.0.1:5020", "--slots", "2"]
        )
        launched = datetime.now(UTC).isoformat(timespec="seconds")
        agent = subprocess.Popen(
            [
                agent_cli,
                "--state-dir",
                str(AGENT_STATE),
                "run",
                "--heartbeat",
                "10",
                "--protect",
                str(SECRET.resolve()),
                "--policies",
                str(DEMO / "policies"),
                "--meeting-room",
                "r301",
            ]
        )
        if not _wait_until_started(collector_cli, launched, agent):
            print("the agent did not start; see its log above", file=sys.stderr)
            return 1
        print(
            "\nBaomi demo is running: collector on "
            f"{LISTEN} (mTLS; enrolment on {ENROLL}), one agent 'demo-host'.\n"
            f"  events:  .venv/bin/baomi-collector events --store {STORE}\n"
            f"  verify:  .venv/bin/baomi-collector audit verify --store {STORE} --pki {PKI} "
            f"--witness {WITNESS}\n"
            f"  guarded: cat {SECRET}/finance/budget-2027.xlsx   (root is not in subjects.toml:"
            " denied)\n"
            f"  why:     .venv/bin/baomi-agent --state-dir {AGENT_STATE} explain --user wang "
            "--action read --path "
            f"{SECRET.resolve()}/finance/budget-2027.xlsx --policies {DEMO / 'policies'}\n"
            f"  meeting: .venv/bin/baomi-agent --state-dir {AGENT_STATE} meeting check --room "
            f"r301 --meeting {DEMO_MEETING} --meetings {DEMO / 'policies' / 'meetings.toml'} "
            "--record   (cabinet simulated on 127.0.0.1:5020)\n"
            f"  console: http://{CONSOLE}/  (first logins; each role sees only its pages)\n"
            f"{logins}"
            "Ctrl-C stops both.\n",
            flush=True,
        )
        while collector.poll() is None and agent.poll() is None:
            time.sleep(0.5)
        print("a process ended; stopping the demo", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the children too; each stops cleanly on its own
    finally:
        for proc in (agent, cabinet, collector):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if agent is not None:
            # The agent's guardian keeps the demo tree denied after the agent; release it.
            subprocess.run(
                [agent_cli, "--state-dir", str(AGENT_STATE), "guardian", "stop"],
                timeout=15,
                check=False,
            )
        print("stopped")
    return 0


def _wait_until_started(
    collector_cli: str, since: str, agent: subprocess.Popen[bytes], timeout_s: float = 90
) -> bool:
    """Whether the agent said it started (its sensors guarding) at the collector, so the
    banner's commands meet a guarded tree; False when it ended or stayed silent."""
    deadline = time.monotonic() + timeout_s
    while agent.poll() is None and time.monotonic() < deadline:
        listed = subprocess.run(
            [collector_cli, "events", "--store", STORE, "--host", "demo-host",
             "--kind", "agent_status", "--since", since, "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if '"state": "started"' in listed.stdout:
            return True
        time.sleep(0.5)
    return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
