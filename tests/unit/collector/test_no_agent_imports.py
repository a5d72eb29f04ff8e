"""The collector is deployed and reasoned about without the agent: it reads the policy
language from the shared package ``baomi`` and imports nothing of ``agent/``."""

from __future__ import annotations

from tests.procs import fresh_python


def test_the_collector_imports_nothing_of_the_agent() -> None:
    probe = (
        "import sys, pkgutil, importlib, collector\n"
        "for m in pkgutil.walk_packages(collector.__path__, 'collector.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'agent' or n.startswith('agent.')))\n"
    )
    out = fresh_python(probe)
    assert out.strip() == "[]", out
