"""The Node clients of tests/clients/node (official SDKs, Claude Code, Codex CLI), for tests.

They are installed by `make node-deps` (`npm ci` from the committed package-lock.json),
never while the tests run. `require_node_clients()` skips a test when they are missing;
with GATE_STRICT_SKIPS=1 (CI) that skip is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
BIN = NODE_DIR / "node_modules" / ".bin"


def require_node_clients() -> None:
    """Skip the calling test (with the reason) unless node and the npm packages are here."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/system-deps.sh installs it)")
    if not (BIN / "claude").exists() or not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.skip(f"the Node clients are not installed in {NODE_DIR} (run `make node-deps`)")


def pinned_versions() -> dict[str, str]:
    """package name -> the version package-lock.json pins (what `npm ci` installs)."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    prefix = "node_modules/"
    return {
        path.removeprefix(prefix): entry["version"]
        for path, entry in lock["packages"].items()
        if path.startswith(prefix) and "/node_modules/" not in path
    }


def run_sdk_case(case: str, gate_url: str, model: str, timeout: float = 120) -> Any:
    """Run one case of sdk_cases.mjs; returns what it printed (JSON), fails with its stderr."""
    require_node_clients()
    result = subprocess.run(
        ["node", str(NODE_DIR / "sdk_cases.mjs"), case, gate_url, model],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, f"node case {case} failed: {result.stderr.strip()}"
    return json.loads(result.stdout.strip().splitlines()[-1])
