"""The `gate` command as a user installs it: `pip install .`, no extras.

The other tests run from the test virtualenv, which the test extra fills with more than
Gate declares (httpx, for one), so an import of an undeclared package passes there and
breaks for every user. Here a fresh virtualenv gets Gate alone, its dependencies
resolved by pip as for a user, and the installed `gate` script is run from it (the
`plain_gate` fixture, tests/e2e/plain_install.py).
"""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pexpect
import pytest

from .gate_process import GateServe, data_dir
from .plain_install import REPO, check_clean, clean_env, copy_checkout, run_plain

NOWHERE = "127.0.0.1:9"  # the discard port: no daemon answers there
EXIT_NO_DAEMON = 3


def imported_packages(package: Path) -> set[str]:
    """The top-level names that `package`'s modules import, but its own and the stdlib."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {package.name}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_imported_directly_is_declared_directly():
    # Declared by what Gate imports, not only by what installs it: a package that comes
    # in through another one's dependencies (h11 through hypercorn) may be dropped there.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {normalized(re.split(r"[\s<>=!~\[;]", d)[0]) for d in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    for name in sorted(imported_packages(REPO / "gate")):
        providers = {normalized(d) for d in distributions.get(name, [name])}
        assert providers & declared, f"gate imports {name}, which pyproject.toml does not declare"


@pytest.mark.e2e
def test_every_module_imports_with_only_the_declared_dependencies(plain_gate):
    # The whole package, not only what the commands below reach.
    script = (
        "import importlib, pkgutil, gate\n"
        "for m in pkgutil.walk_packages(gate.__path__, 'gate.'):\n"
        "    if m.name != 'gate.__main__':\n"  # that one runs the command
        "        importlib.import_module(m.name)\n"
        "print(gate.__file__)\n"
    )
    python = plain_gate.parent / "python"
    result = subprocess.run(
        [python, "-c", script], env=clean_env({}), cwd="/", capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert Path(result.stdout.decode().strip()).is_relative_to(plain_gate.parents[1])


@pytest.mark.e2e
def test_commands_without_a_daemon(plain_gate, gate_env):
    env = {**gate_env, "GATE_SERVER__BIND": NOWHERE}
    Path(env["XDG_DATA_HOME"]).mkdir(parents=True, exist_ok=True)
    helped = run_plain(plain_gate, "--help", env=env)
    check_clean(helped, 0)
    assert "Usage: gate" in helped.stdout.decode()
    for args in [
        ("status",),
        ("stop",),
        ("providers", "list"),
        ("peers", "list"),
    ]:
        stderr = check_clean(run_plain(plain_gate, *args, env=env), EXIT_NO_DAEMON)
        assert stderr.startswith(f"gate: error: no Gate daemon answers at http://{NOWHERE}")
        assert stderr.count("\n") == 1, args
    # `logs -f` reads the log file when no daemon runs; before any start there is none.
    follow = check_clean(run_plain(plain_gate, "logs", "--follow", env=env), 1)
    assert follow.endswith(f"gate: error: no log at {data_dir(env) / 'logs' / 'gate.log'}\n")
    # The documented paths that need no daemon: they use gate.toml and gate.db directly.
    created = run_plain(plain_gate, "keys", "create", "first", env=env)
    assert "no daemon running; wrote" in check_clean(created, 0)
    listed = run_plain(plain_gate, "keys", "list", env=env)
    assert "no daemon running; read" in check_clean(listed, 0)
    assert "first" in listed.stdout.decode()
    check_clean(run_plain(plain_gate, "config", "show", env=env), 0)


@pytest.mark.e2e
def test_serve_status_and_stop(plain_gate, gate_env):
    Path(gate_env["XDG_DATA_HOME"]).mkdir(parents=True, exist_ok=True)
    with GateServe(clean_env(gate_env), command=[str(plain_gate)]) as node:
        env = {**gate_env, "GATE_SERVER__BIND": node.url.removeprefix("http://")}
        status = run_plain(plain_gate, "status", env=env)
        check_clean(status, 0)
        assert node.node_id in status.stdout.decode()
        check_clean(run_plain(plain_gate, "stop", env=env), 0)
        assert node.wait(timeout=20) == 0
    logs = run_plain(plain_gate, "logs", env=env)  # from its file, now that it stopped
    assert "no daemon running; reading" in check_clean(logs, 0)
    assert "database open" in logs.stdout.decode()


@pytest.mark.e2e
def test_the_first_make_serve_shows_the_banner_first(tmp_path, gate_env):
    """The README's first command in a fresh clone, at a terminal: what a newcomer sees
    before the banner is make's own command lines, not pip's or setuptools' warnings nor
    log lines (the log file keeps those). Ctrl-C then says at once that Gate drains."""
    checkout = copy_checkout(tmp_path / "clone")
    home = tmp_path / "home"
    home.mkdir()
    # Port 0 and the test's own dirs: the quick start's defaults but for where it listens.
    env = clean_env({**gate_env, "HOME": str(home), "GATE_SERVER__BIND": "127.0.0.1:0"})
    # A newcomer's make is not run by another make (as `make test` runs these tests):
    # without these, make prints "Entering directory" lines of its own.
    for inherited in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(inherited, None)
    child = pexpect.spawn(
        "make", ["serve"], cwd=checkout, env=env, timeout=600, encoding="utf-8", echo=False
    )
    try:
        child.expect(r"API listening on http://127\.0\.0\.1:\d+")
        before_banner = child.before.splitlines()
        child.expect(r"data \S+")
        child.sendintr()
        child.expect("shutting down", timeout=5)
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    shown = [
        line
        for line in before_banner
        # This machine's pip configuration names package folders that may be absent:
        # pip's own notice about them is the machine's, not Gate's.
        if line.strip() and not line.startswith("WARNING: Location 'file://")
    ]
    *commands, banner = shown
    assert banner.startswith("Gate ") and " node " in banner, shown
    assert all(
        line.startswith(("python3 -m venv", ".venv/bin/", "PYTHONWARNINGS=")) for line in commands
    ), shown
