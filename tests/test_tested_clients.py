"""The README's table of tested clients names the versions the tests really run."""

import json
from pathlib import Path

from tests.clients.node_clients import NODE_DIR, pinned_versions

ROOT = Path(__file__).resolve().parents[1]
README_ROWS = {  # npm package -> how the README's table names it
    "openai": "`openai` (Node)",
    "@anthropic-ai/sdk": "`@anthropic-ai/sdk` (Node)",
    "@anthropic-ai/claude-code": "Claude Code",
    "@openai/codex": "Codex CLI",
}


def test_the_readme_names_the_pinned_versions():
    readme = (ROOT / "README.md").read_text()
    pinned = pinned_versions()
    declared = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for package, row in README_ROWS.items():
        assert declared[package] == pinned[package], package  # exact pins, no ranges
        assert f"| {row} | {pinned[package]} |" in readme, (package, pinned[package])
