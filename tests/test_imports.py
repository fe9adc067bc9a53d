"""No import cycle among Gate's own modules.

The graph is read from the source with `ast`, so it holds every import the design has:
at module level, inside functions, and under `if TYPE_CHECKING:`. An import of
`gate.a.b.c` also runs `gate/a/__init__.py` and `gate/a/b/__init__.py`, so it counts as
an edge to each of those packages too (a package that re-exports can close a cycle),
except the importer's own packages, which always run before it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gate"


def module_names() -> dict[str, Path]:
    """Each module of the package by dotted name; a package is its `__init__.py`."""
    modules: dict[str, Path] = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def ancestors(name: str) -> list[str]:
    """`gate.a.b` -> ["gate", "gate.a"]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(path: Path, name: str, is_package: bool) -> Iterator[str]:
    """The dotted names every import statement of the file may load, anywhere in it."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            # `from pkg import name` loads pkg.name when that is a module.
            yield from (f"{module}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the Gate modules its imports run. The packages an import runs on the
    way are left out when they are the module's own (they always run first), but a
    module that names its own package (`from its.package import sibling`) depends on
    that package's `__init__`, which imports the module back."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = {name, *ancestors(name)}
        edges: set[str] = set()
        for target in imported_names(path, name, path.name == "__init__.py"):
            passed = [c for c in ancestors(target) if c not in own]
            for candidate in [*passed, target]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles that together pass through every module of every strongly connected group
    (Tarjan), each as the modules along it, the first repeated at the end: so a cycle
    next to another in one tangle is reported too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found: list[list[str]] = []
    for group in groups:
        uncovered = set(group)
        while uncovered:
            cycle = _cycle_in(graph, group, min(uncovered))
            uncovered -= set(cycle)
            found.append(cycle)
    return found


def _cycle_in(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest cycle from `start` within its group (breadth-first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(group)}")  # pragma: no cover


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "gate.node" in graph["gate.cli.daemon"]  # inside a function
    assert "gate.config" in graph["gate.cli._common"]  # under TYPE_CHECKING
    assert "gate.services.control" in graph["gate.node"]  # the package of a module


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    two = {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}  # one tangle, two cycles
    assert cycles(two) == [["a", "b", "a"], ["c", "a", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_gate_modules():
    found = cycles(import_graph())
    assert not found, "import cycles among gate modules:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in found
    )
