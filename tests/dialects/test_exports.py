"""gate/dialects is pure translation: no IO, no clock, and its public names on purpose."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import gate.dialects
from tests.test_layout import imported_modules

DIALECTS_DIR = pathlib.Path(gate.dialects.__file__).parent
IO_MODULES = {
    "trio",
    "socket",
    "ssl",
    "iroh",
    "asyncio",
    "selectors",
    "threading",
    "httpx",
    "httpx2",
}
FORBIDDEN = IO_MODULES | {"time", "datetime"}  # time is an argument (STYLE §1)


def test_no_module_imports_io_libraries_in_source() -> None:
    for path in sorted(DIALECTS_DIR.glob("*.py")):
        for name in imported_modules(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_package_pulls_in_no_io_module() -> None:
    code = (
        "import sys, gate.dialects;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_MODULES)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_exported_on_purpose() -> None:
    modules = {path.stem for path in DIALECTS_DIR.glob("*.py")} - {"__init__"}
    public = {name for name in dir(gate.dialects) if not name.startswith("_")} - modules
    assert set(gate.dialects.__all__) == public
