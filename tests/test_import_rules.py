"""The layout's rules, read from the source (every import statement, also those inside functions):
the engine imports no Flower, the server and client apps never import each other, the method
modules never import the demo assets or the data code, and the engine has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fedra_core", "server_app", "client_app", "runners")


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _sources(package: str) -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted((REPO / package).rglob("*.py"))}


def _offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in _sources(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_engine_imports_no_flower():
    assert _offending("fedra_core", ("flwr",)) == []


def test_server_and_client_apps_never_import_each_other():
    assert _offending("server_app", ("client_app",)) == []
    assert _offending("client_app", ("server_app",)) == []


def test_methods_and_families_never_import_the_demo_or_data():
    bad = [line for line in _offending("fedra_core", ("fedra_core.demo", "fedra_core.data"))
           if line.startswith(("fedra_core.methods", "fedra_core.families"))]
    assert bad == []


def test_engine_has_no_import_cycle():
    sources = _sources("fedra_core")
    graph = {m: {n for n in names if n in sources and n != m} for m, names in sources.items()}
    for module, names in graph.items():  # a package import means its __init__; ignore self/parent edges
        graph[module] = {n for n in names if not module.startswith(n + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_rules_see_a_violation(tmp_path):
    """The checker itself finds an import inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from client_app.node import NodeRuntime\n")
    assert "client_app.node" in _imports(bad)
