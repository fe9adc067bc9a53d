"""Gate as a user installs it: a fresh virtualenv with `pip install <this checkout>` alone
(no extras), and its `gate` script run as a user runs it.

The other tests run from the test virtualenv, which the test extra fills with more than
Gate declares (httpx, for one), so an import of an undeclared package passes there and
breaks for every user. Building the virtualenv takes about a minute (pip builds Gate's
wheel and installs its dependencies, from pip's cache after the first run), so
tests/e2e/conftest.py builds it once per session (the `plain_gate` fixture) for every
test that needs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The environment with nothing of the test virtualenv that could reach the user's
    (Python ignores these when they are empty)."""
    return {**os.environ, **env, "PYTHONPATH": "", "PYTHONHOME": "", "VIRTUAL_ENV": ""}


def copy_checkout(dest: Path) -> Path:
    """This checkout's files at `dest`, as a fresh clone has them (no virtualenv, no
    build or cache folders, no installed Node modules)."""
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "artifacts",
            "node_modules",
        ),
    )
    return dest


def install_plain(root: Path) -> Path:
    """A virtualenv under `root` with only `pip install <this checkout>`; its `gate`."""
    # A copy of the source: pip builds in the tree it is given, and would leave build/
    # and gate.egg-info in the checkout.
    source = copy_checkout(root / "source")
    venv = root / "venv"
    env = clean_env({})
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=env, timeout=120)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    installed = subprocess.run(
        [*pip, "install", "--quiet", source],
        capture_output=True,
        env=env,
        cwd=root,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr.decode(errors="replace")[-3000:]
    return venv / "bin" / "gate"


def run_plain(gate: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # From the data dir, not the checkout: only the installed package can be imported.
    return subprocess.run(
        [gate, *args],
        env=clean_env(env),
        cwd=env["XDG_DATA_HOME"],
        capture_output=True,
        timeout=60,
    )


def check_clean(result: subprocess.CompletedProcess, code: int) -> str:
    """stderr, after checking the exit code and that nothing crashed."""
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr and "ModuleNotFoundError" not in stderr, stderr
    assert result.returncode == code, stderr
    return stderr
