"""The folder tree is the architecture: the README's Layout section names what exists,
and each subsystem keeps to its own room."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1].strip().splitlines()


def named_paths() -> set[Path]:
    """Each path the Layout names: a name indented by two sits under the last top-level
    one; a line indented further goes on with the description above it."""
    paths: set[Path] = set()
    parent = Path()
    for line in layout_block():
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        if indent == 0:
            parent = Path(name)
            paths.add(parent)
        elif indent == 2:
            paths.add(parent / name)
    return paths


def test_every_path_the_layout_names_exists():
    missing = sorted(str(p) for p in named_paths() if not (ROOT / p).exists())
    assert not missing, f"README's Layout names what is not there: {missing}"


def test_every_subsystem_package_is_in_the_layout():
    named = {p.name.rstrip("/") for p in named_paths() if p.parent == Path("gate/services")}
    packages = {p.name for p in (ROOT / "gate/services").iterdir() if (p / "__init__.py").exists()}
    stray = sorted(p.name for p in (ROOT / "gate/services").glob("*.py") if p.name != "__init__.py")
    assert packages == named, f"packages {sorted(packages)} vs Layout {sorted(named)}"
    assert not stray, f"modules outside a subsystem package: {stray}"


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports by absolute name (a relative import names one of its
    own package's, never a library's)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_the_transport_imports_iroh():
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "gate").rglob("*.py")
        if any(re.fullmatch(r"iroh(\..*)?", name) for name in imported_modules(path))
    )
    assert importers and all(p.startswith("gate/services/transport/") for p in importers), importers
