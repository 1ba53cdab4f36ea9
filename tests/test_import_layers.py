"""No import circles inside ``backend/``: each module builds only on modules below it.

A circle means two modules each need the other, so neither can be read, tested or changed alone
(the knot ``catalog -> verify -> restore -> plan -> catalog`` once was one). Every import counts,
at module level or inside a function, except those only the type checker sees (``if
TYPE_CHECKING:``). ``from backend.x import y`` counts as importing ``backend.x.y`` when that is a
module, else ``backend.x``; a package's ``__init__`` counts only for what it imports itself.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import backend

ROOT = Path(backend.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self, known: dict[str, Path]) -> None:
        self.known, self.found = known, set[str]()

    def _module(self, name: str) -> str | None:
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        return name or None

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if (module := self._module(alias.name)) is not None:
                self.found.add(module)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module is None:
            return
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            if (module := self._module(full if full in self.known else node.module)) is not None:
                self.found.add(module)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        visitor = _Imports(known)
        visitor.visit(ast.parse(path.read_text()))
        graph[name] = {m for m in visitor.found if m not in (name, "backend")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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


def test_the_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_inside_backend() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["backend.restore.run"], "the graph was not read"
    found = circles(graph)
    described = [
        " -> ".join(c) + "; edges: " + ", ".join(f"{m} -> {n}" for m in c for n in sorted(graph[m]) if n in c)
        for c in found
    ]
    assert not found, "import circles in backend/:\n" + "\n".join(described)
