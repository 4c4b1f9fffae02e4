"""The layout the docs promise (docs/architecture.md): imports flow one way, modules stay small, ruff is clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 420  # "about 400": one job per module


def test_layers_import_one_way():
    # the contract in .importlinter: cli -> napari -> evaluation -> pipeline -> {segment, match, features}
    # -> models -> data -> core
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(config_filename='.importlinter'))"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_module_is_too_long():
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
               for p in (ROOT / "medshot").rglob("*.py")}
    assert not {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES}


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "medshot", "tests", "benchmarks", "docs"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def _import_graph() -> dict[str, set[str]]:
    """medshot module -> the medshot modules it imports (at the top or inside a function).

    grimp gives the imports; ``from PACKAGE import name`` also counts as importing PACKAGE (its
    ``__init__`` runs first and is what such a line reads from), which grimp records as an import of
    ``PACKAGE.name`` when ``name`` is a module.
    """
    grimp = pytest.importorskip("grimp")
    # this checkout's medshot, not an installed copy elsewhere
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("medshot", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    modules = {m for m in graph.modules if m == "medshot" or m.startswith("medshot.")}
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    for module in modules:
        path = ROOT.joinpath(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                named = ".".join(base + ([node.module] if node.module else []))
                if named in modules and named != module:
                    edges[module].add(named)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    # the check below could not fail if this did not
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    # a cycle makes the import order matter and hides which module depends on which
    # (issue 21: cli/main <-> cli/run, pipeline/oneshot <-> pipeline/ensemble,
    # match/__init__ <-> match/correspond <-> match/search)
    edges = _import_graph()
    assert "medshot.match.correspond" in edges["medshot.match"]  # the graph is the package's
    assert _cycles(edges) == []
