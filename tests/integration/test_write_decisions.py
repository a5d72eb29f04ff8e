"""Writes and truncations of labelled files decided by the write rules (pre-content
events, Linux 6.14+), and the degraded mode without them, end to end.

DAC refuses writes to everyone the policy does not list as a writer (test_dac.py);
what DAC cannot refuse is root's write, and any write by a uid DAC lets through. Here
root is a listed reader (``ops``) with no write rule: its open succeeds as a read, its
write and its truncate(2) by path are refused by the kernel on the guard's answer and
recorded as ``write`` denials. Without pre-content events the same writes go through
and the guard says, in its health, that writes rest on file modes and ACLs alone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from tests.integration import test_file_guard
from tests.integration.test_agent import AgentThread, host_events, wait_for
from tests.integration.test_file_guard import RunningCollector, Site, running_guard

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

site = test_file_guard.site
ALICE, BOB = 2001, 2002
Guarded = tuple[AgentThread, RunningCollector]

OPS = """
[people.ops]
uid = 0
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"
"""


@pytest.fixture
def writers(site: Site) -> Site:
    """root listed as ops (reads by role:staff, no write rule); alice may write s2.txt."""
    site.write_policy(extra=f"p, alice, {site.root}/s2.txt, write, allow\n")
    with (site.policies / "subjects.toml").open("a", encoding="utf-8") as f:
        f.write(OPS)
    return site


@pytest.fixture
def deciding(writers: Site, tmp_path: Path) -> Iterator[Guarded]:
    with running_guard(writers, tmp_path) as both:
        yield both


@pytest.fixture
def dac_only(writers: Site, tmp_path: Path) -> Iterator[Guarded]:
    with running_guard(writers, tmp_path, pre_content=False, health="degraded") as both:
        yield both


def _as_root(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Python code in a root child (the agent's own pid is never asked)."""
    return subprocess.run(
        ["python3", "-c", code, *args], capture_output=True, text=True, timeout=10, check=False
    )


APPEND = "import os, sys; os.write(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND), b'forged\\n')"
TRUNCATE = "import os, sys; os.truncate(sys.argv[1], 0)"


def _accesses(collector: RunningCollector, agent: AgentThread) -> list[events_pb2.FileAccess]:
    assert agent.agent.recorder.flush()
    time.sleep(FOLD_WAIT)  # the guard folds repeats once a second
    assert agent.agent.recorder.flush()
    return [
        e.file_access for e in host_events(collector.store, "ws-01") if e.HasField("file_access")
    ]


FOLD_WAIT = 1.5


def _files_health(agent: AgentThread) -> str:
    return next(s.health() for s in agent.agent.sensors if s.name == "files").detail


def test_a_write_dac_cannot_refuse_is_decided_and_recorded(
    writers: Site, deciding: Guarded
) -> None:
    agent, collector = deciding
    s1, s2 = writers.root / "s1.txt", writers.root / "s2.txt"
    assert "write/truncate: decided per file and process" in _files_health(agent)
    before = s1.read_bytes()
    appended = _as_root(APPEND, str(s1))
    assert appended.returncode != 0 and "Operation not permitted" in appended.stderr
    truncated = _as_root(TRUNCATE, str(s1))
    assert truncated.returncode != 0 and "Operation not permitted" in truncated.stderr
    assert s1.read_bytes() == before
    # alice holds write on s2.txt: her append is decided, allowed and recorded.
    done = test_file_guard.run_as(ALICE, "/bin/sh", "-c", f"echo more >> {s2}")
    assert done.returncode == 0, done.stderr
    assert s2.read_text().endswith("more\n")
    # bob reads s1.txt: one read; reads through his descriptor are not asked again.
    assert test_file_guard.run_as(BOB, "cat", str(s1)).returncode == 0

    wait_for(lambda: len(_accesses(collector, agent)) >= 6)
    seen = [(a.uid, a.path, a.action, a.decision) for a in _accesses(collector, agent)]
    allow, deny = events_pb2.DECISION_ALLOW, events_pb2.DECISION_DENY
    assert sorted(seen) == sorted(
        [
            (0, str(s1), "read", allow),  # root's open for append: an open is a read
            (0, str(s1), "write", deny),  # ... its write
            (0, str(s1), "write", deny),  # truncate(2) by path: no open, a write
            (ALICE, str(s2), "read", allow),
            (ALICE, str(s2), "write", allow),
            (BOB, str(s1), "read", allow),
        ]
    )
    denied = [a for a in _accesses(collector, agent) if a.action == "write" and a.uid == 0]
    assert all(a.user == "ops" and "no rule allows" in a.reason for a in denied)


def test_without_pre_content_writes_rest_on_dac_and_health_says_so(
    writers: Site, dac_only: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    agent, collector = dac_only
    detail = _files_health(agent)
    assert "writes rest on file modes and ACLs alone" in detail
    s1 = writers.root / "s1.txt"
    # root is not bound by DAC: its write goes through, and only its open is recorded.
    assert _as_root(APPEND, str(s1)).returncode == 0
    assert s1.read_text().endswith("forged\n")
    # an ordinary uid without the right is still refused, by DAC
    refused = test_file_guard.run_as(BOB, "/bin/sh", "-c", f"echo x >> {writers.root / 's2.txt'}")
    assert refused.returncode != 0
    wait_for(lambda: any(a.uid == 0 for a in _accesses(collector, agent)))
    assert [a.action for a in _accesses(collector, agent) if a.uid == 0] == ["read"]
