"""The import graph of ``imageindex`` has no cycle, and the read side never imports the write side.

Every module under include/imageindex is parsed (never imported); each import it can execute is
an edge — top-level or inside a function, absolute or relative (``from . import x``). Imports
under ``if TYPE_CHECKING:`` are left out: they never run. ``from pkg import name`` points at
the module ``pkg.name`` when there is one, else at ``pkg``; a module does not depend on its
parent package's ``__init__`` through the graph (a package re-exporting its modules is no cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "include"
PLUGIN = ROOT / "plugins"

#: Cycles known and being removed, by name; each entry must still be a cycle (delete it when
#: it is gone).
KNOWN_CYCLES: dict[str, frozenset[str]] = {}

#: The write side: the indexing pipeline.
WRITE_SIDE = "imageindex.pipeline"
#: The read side: searching, exporting and loading what was indexed.
READ_SIDE = ("imageindex.search", "imageindex.export", "imageindex.loader")


def module_names(src: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package`` under ``src``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes that can run (skips ``if TYPE_CHECKING:`` bodies), at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, modules: dict) -> str | None:
    """The longest prefix of ``name`` that is a known module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path, package: str = "imageindex") -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    stem = node.module or ""
                targets = [
                    f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                    for alias in node.names
                ]
            for target in targets:
                owner = _owner(target, modules)
                if owner and owner != name:
                    edges.add(owner)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_library_has_no_import_cycle():
    graph = import_graph(LIBRARY)
    assert len(graph) > 50 and "imageindex.pipeline.stages.plan" in graph
    found = set(cycles(graph))
    known = set(KNOWN_CYCLES.values())
    new = [sorted(c) for c in found - known]
    assert not new, f"import cycles in include/imageindex: {new}"
    stale = [name for name, c in KNOWN_CYCLES.items() if c not in found]
    assert not stale, f"no longer cycles, delete them from KNOWN_CYCLES: {stale}"


def test_the_read_side_never_imports_the_pipeline():
    graph = import_graph(LIBRARY)
    for module in READ_SIDE:
        bad = sorted(m for m in reachable(graph, module) if m.startswith(WRITE_SIDE))
        assert not bad, f"{module} imports the write side: {bad}"


def test_the_plugin_never_imports_the_pipeline():
    """The REST API (plugins/imageindex_airflow) reads; only the DAGs run the pipeline."""
    library = import_graph(LIBRARY)
    for path in sorted((PLUGIN / "imageindex_airflow").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _imports(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                if name != "imageindex" and not name.startswith("imageindex."):
                    continue
                owner = _owner(name, library)
                assert owner is not None, f"{path}: imports {name}, which is no module"
                bad = {owner, *reachable(library, owner)}
                assert not any(m.startswith(WRITE_SIDE) for m in bad), (
                    f"{path.relative_to(ROOT)}: {name} reaches the pipeline"
                )


def test_the_walk_finds_cycles_through_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
    )
    (pkg / "d.py").write_text("import pkg.c\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.sub.b"})]


@pytest.mark.parametrize("module", READ_SIDE)
def test_read_side_modules_exist(module):
    assert module in import_graph(LIBRARY)
