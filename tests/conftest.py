import os

import pytest

# The real engine (llama.cpp on a tiny generated model): llama_engine, make_llama_engine.
pytest_plugins = ["tests.engine.fixtures"]


@pytest.fixture
def gate_env(tmp_path, monkeypatch):
    """An isolated home for one test: config and data dirs under tmp_path, no GATE_* leaks."""
    for key in list(os.environ):
        if key.startswith("GATE_") or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        # Tests run many nodes at once, on loopback only: no fixed port, no iroh relays,
        # no discovery: test traffic stays on this machine.
        "GATE_P2P__PORT": "0",
        "GATE_P2P__BIND_HOST": "127.0.0.1",
        "GATE_P2P__IROH_RELAY_MODE": "disabled",
        "GATE_P2P__DISCOVERY": "false",
        # Nor does any look for engines where this machine's own may listen (Ollama,
        # llama.cpp, ... on their default ports): a test that looks for engines points
        # providers.probe_urls at engines it started itself.
        "GATE_PROVIDERS__PROBE_URLS": "{}",
        # A relay's status port, unless a test sets it: not its default 127.0.0.1:31146,
        # where this machine's own relay (or another test's) may listen.
        "GATE_RELAYD_STATUS_BIND": "127.0.0.1:0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With GATE_STRICT_SKIPS=1 (CI), a skipped test is a failed test.

    Tests that need a system package or the engine may skip on a laptop without it;
    CI installs everything, so a skip there means something is missing.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("GATE_STRICT_SKIPS") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped under GATE_STRICT_SKIPS=1: {report.longrepr}"
