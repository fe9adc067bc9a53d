from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .gate_process import GateServe
from .plain_install import install_plain


@pytest.fixture
def start_gate(gate_env) -> Iterator[Callable[..., GateServe]]:
    """Start `gate serve` processes with a given gate.toml; all are stopped at teardown."""
    running: list[GateServe] = []

    def start(config: str = "", **kwargs) -> GateServe:
        gate = GateServe(gate_env, config=config, **kwargs)
        running.append(gate)
        return gate.start()

    yield start
    for gate in running:
        gate.close()


@pytest.fixture(scope="session")
def plain_gate(tmp_path_factory) -> Path:
    """The `gate` script of a virtualenv that has only `pip install <this checkout>`,
    built once per session (tests/e2e/plain_install.py)."""
    return install_plain(tmp_path_factory.mktemp("plain-install"))


def engine_config(engine, *, name: str = "llama", extra: str = "") -> str:
    """gate.toml naming one llama.cpp engine (health checks every second in tests)."""
    return (
        "[providers]\nhealth_interval = 1.0\n"
        f"[[providers.engines]]\nname = '{name}'\nkind = 'llamacpp'\n"
        f"base_url = '{engine.root_url}'\n" + extra
    )
