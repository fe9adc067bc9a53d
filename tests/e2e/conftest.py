import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engine.fixtures import require_llama

from .gate_process import GateServe, detached_daemons
from .plain_install import install_plain

# Real clients' prompts are large and the tiny model reads one token per byte: Claude
# Code's first request with its 24 tools is ~99,000 tokens, Codex's ~41,000.
LONG_CONTEXT = 131072


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


@pytest.fixture(scope="session")
def long_context_engine(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One llama.cpp engine whose context holds a real coding agent's whole request."""
    require_llama()
    from tests.engine.llama_server import LlamaServer

    log_dir = tmp_path_factory.mktemp("long-engine")
    with LlamaServer(tiny_model_path, n_ctx=LONG_CONTEXT, log_dir=log_dir) as server:
        yield server


@pytest.fixture
def detached(gate_env):
    """Whatever `gate serve --background` started in this test is killed at teardown,
    whether the test got as far as reading its pid or not."""
    yield
    for pid in detached_daemons(gate_env):
        os.kill(pid, signal.SIGKILL)
