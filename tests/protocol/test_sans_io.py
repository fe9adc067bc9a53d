"""gate/protocol must stay free of IO (STYLE §1): checked two ways."""

import pathlib
import subprocess
import sys

import gate.protocol
from tests.test_layout import imported_modules

IO_MODULES = {"trio", "socket", "ssl", "iroh", "asyncio", "selectors", "threading"}
# Time is an argument, never a call (STYLE §1); the interpreter itself loads `time`,
# so it is forbidden in the source only.
FORBIDDEN = IO_MODULES | {"time"}
PROTOCOL_DIR = pathlib.Path(gate.protocol.__file__).parent


def test_no_module_imports_io_libraries_in_source():
    for path in sorted(PROTOCOL_DIR.glob("*.py")):
        for name in imported_modules(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_package_pulls_in_no_io_module():
    # A fresh interpreter, so modules that other tests imported do not count.
    code = (
        "import sys, gate.protocol;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(IO_MODULES)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_exported_on_purpose():
    exported = set(gate.protocol.__all__)
    assert exported == {name for name in dir(gate.protocol) if not name.startswith("_")} - {
        "channel",
        "errors",
        "framing",
        "messages",
        "node_id",
        "proxy",
        "schema",
        "sni",
    }
    for name in exported:
        assert getattr(gate.protocol, name) is not None
