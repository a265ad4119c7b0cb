"""The package's import graph, read from the source (no import runs): no cycles, no module
of the library importing the application wing or the command line, and the generic runner
with no renderer behind it."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "taichi_dr"
WING = ("taichi_dr.apps", "taichi_dr.commands", "taichi_dr.cli", "taichi_dr.__main__")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict:
    """{module: set of taichi_dr modules it imports}; ``from pkg import sub`` points at the
    submodule when there is one."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


GRAPH = _graph()


def _reach(start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_graph_is_read():
    assert {"taichi_dr.apps.runner", "taichi_dr.render.pipeline"} <= set(GRAPH)
    assert "taichi_dr.apps.live" in GRAPH["taichi_dr.apps.runner"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_cycle(module):
    assert module not in _reach(module)


def test_library_does_not_import_the_wing():
    offenders = {
        (m, e)
        for m, edges in GRAPH.items()
        if not m.startswith(WING)
        for e in edges
        if e.startswith(WING)
    }
    assert not offenders


@pytest.mark.parametrize("module", ["taichi_dr.apps.runner", "taichi_dr.apps.live"])
def test_runner_needs_no_renderer(module):
    assert not {m for m in _reach(module) if m.startswith("taichi_dr.render")}
