"""The collector is deployed and reasoned about without the agent: it reads the policy
language from the shared package ``baomi`` and imports nothing of ``agent/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_collector_imports_nothing_of_the_agent() -> None:
    probe = (
        "import sys, pkgutil, importlib, collector\n"
        "for m in pkgutil.walk_packages(collector.__path__, 'collector.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'agent' or n.startswith('agent.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO / 'protos'}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
