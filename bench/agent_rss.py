"""The idle agent's footprint: enrol one with the CLI, run it, read RSS and CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.proc import BenchError
from collector.store.sqlite import SQLiteStore

GUARDED_FILES = 2_000  # labelled files in the idle agent's protected tree (as root)
GUARDED_DIRS = 20

GUARD_SUBJECTS = """
[people.bench]
uid = 1001
department = "bench"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"
"""


@dataclass
class AgentResult:
    """What the idle agent used."""

    rss_mb: float  # the agent process and its children (the guardian)
    uss_mb: float
    agent_rss_mb: float  # the agent process alone
    guarded_files: int  # labelled files under its protected tree (0: no file guard)
    processes: int
    threads: int
    cpu_percent: float
    delivered: int  # events of the agent stored by the collector


def _agent_command() -> str:
    local = Path(sys.executable).parent / "baomi-agent"
    found = str(local) if local.exists() else shutil.which("baomi-agent")
    if found is None:
        raise BenchError("no baomi-agent command; install the package (make venv)")
    return found


def _tree(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def _guarded_tree(agent: str, workdir: Path, state: Path) -> list[str]:
    """A protected tree of GUARDED_FILES labelled files and its policy, labelled with
    the agent's own key (``label set -r``); the ``run`` options that guard it."""
    top = workdir / "secret"
    for d in range(GUARDED_DIRS):
        (top / f"d{d:02d}").mkdir(parents=True)
        for i in range(GUARDED_FILES // GUARDED_DIRS):
            (top / f"d{d:02d}" / f"f{i:03d}").write_bytes(b"secret\n")
    policies = workdir / "policies"
    policies.mkdir()
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "policies" / "model.conf", policies / "model.conf")
    (policies / "policy.csv").write_text(f"p, role:staff, {top}/**, read, allow\n")
    (policies / "subjects.toml").write_text(GUARD_SUBJECTS, encoding="utf-8")
    labelled = subprocess.run(
        [agent, "--state-dir", str(state), "label", "set", "-r", str(top), "--level", "秘密"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if labelled.returncode != 0:
        raise BenchError(f"baomi-agent label set -r failed: {labelled.stderr.strip()}")
    return ["--protect", str(top), "--policies", str(policies)]


def measure(
    workdir: Path,
    *,
    store_path: Path,
    ca: Path,
    ports: dict[str, int],
    host_id: str,
    token: str,
    settle: float = 10.0,
    window: float = 5.0,
) -> AgentResult:
    """Enrol ``host_id`` with ``token`` and run the agent with the ``baomi-agent`` CLI
    -- as root with the file guard on a tree of GUARDED_FILES labelled files (its
    guardian, DAC keeper and labelled-inode set included); after ``settle`` seconds
    read its RSS (with any child processes) and its CPU use over ``window`` seconds."""
    agent = _agent_command()
    state = workdir / "agent"
    log = workdir / "agent.log"
    enrolled = subprocess.run(
        [
            agent,
            "--state-dir",
            str(state),
            "enroll",
            "--collector",
            f"127.0.0.1:{ports['agents']}",
            f"--token={token}",  # a token may begin with '-'
            "--ca",
            str(ca),
            "--enroll-address",
            f"127.0.0.1:{ports['enroll']}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if enrolled.returncode != 0:
        raise BenchError(f"baomi-agent enroll failed: {enrolled.stderr.strip()}")
    guard = _guarded_tree(agent, workdir, state) if os.geteuid() == 0 else []
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [agent, "--state-dir", str(state), "run", *guard], stdout=out, stderr=out
        )
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise BenchError(f"baomi-agent run exited with {proc.returncode}; see {log}")
        procs = _tree(psutil.Process(proc.pid))
        before = [p.memory_full_info() for p in procs]
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        t0 = time.perf_counter()
        time.sleep(window)
        cpu1 = sum(sum(p.cpu_times()[:2]) for p in procs)
        cpu = (cpu1 - cpu0) / (time.perf_counter() - t0) * 100
        after = [p.memory_full_info() for p in procs]
        threads = sum(p.num_threads() for p in procs)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if guard:  # the guardian outlives the agent by design: release it
            subprocess.run(
                [agent, "--state-dir", str(state), "guardian", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
    store = SQLiteStore(store_path)
    try:
        delivered = len(list(store.chain(host_id)))
    finally:
        store.close()
    # The larger of the readings before and after the CPU window.
    return AgentResult(
        rss_mb=max(sum(i.rss for i in m) for m in (before, after)) / 2**20,
        uss_mb=max(sum(i.uss for i in m) for m in (before, after)) / 2**20,
        agent_rss_mb=max(m[0].rss for m in (before, after)) / 2**20,
        guarded_files=GUARDED_FILES if guard else 0,
        processes=len(procs),
        threads=threads,
        cpu_percent=cpu,
        delivered=delivered,
    )
