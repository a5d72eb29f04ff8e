"""The console's shape: it runs over the parts the collector hands it
(:class:`collector.console.Backend`) and never imports the gRPC server, and no chain of
imports among the collector's modules leads from a console module back to itself.

Imports are read from the source (every ``import``, under TYPE_CHECKING and inside
functions too), so a cycle that only shows at type-check time or on a rare path is
caught as well."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
COLLECTOR = ROOT / "collector"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(COLLECTOR.rglob("*.py"))}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The collector modules ``path`` imports: ``from a import b`` is module a.b when
    that is a module, else a."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    """Each collector module and the collector modules it imports."""
    known = _modules()
    return {name: _imports(path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others
    (strongly connected components of more than one module, or importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in sorted(graph[name]):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == name:
                    break
            if len(group) > 1 or name in graph[name]:
                found.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # from PACKAGE import MODULE; under TYPE_CHECKING; only inside a function
    assert "collector.console.routes" in graph["collector.console.server"]
    assert "collector.console" in graph["collector.server"]
    assert "collector.reports" in graph["collector.console.routes.reports"]


def test_no_console_module_imports_the_server() -> None:
    graph = import_graph()
    console = {name for name in graph if name.startswith("collector.console")}
    assert {name for name in console if "collector.server" in graph[name]} == set()


def test_no_import_cycle_through_the_console() -> None:
    involving = [
        group
        for group in cycles(import_graph())
        if any(name.startswith("collector.console") for name in group)
    ]
    assert involving == []


def test_the_console_app_loads_without_the_grpc_server() -> None:
    # grpc itself imports the grpc_health and grpc_reflection packages; their servicers
    # are what the gRPC server loads.
    server_modules = (
        "collector.server",
        "grpc_health.v1.health",
        "grpc_reflection.v1alpha.reflection",
    )
    probe = (
        "import sys, collector.console.app, collector.console.routes; "
        f"print(sorted(m for m in {server_modules!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
    # and the probe sees them once the server is imported
    probe = probe.replace("collector.console.routes", "collector.server")
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == repr(sorted(server_modules))
