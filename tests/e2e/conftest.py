from collections.abc import Callable, Iterator

import pytest

from .gate_process import GateServe


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


def engine_config(engine, *, name: str = "llama", extra: str = "") -> str:
    """gate.toml naming one llama.cpp engine (health checks every second in tests)."""
    return (
        "[providers]\nhealth_interval = 1.0\n"
        f"[[providers.engines]]\nname = '{name}'\nkind = 'llamacpp'\n"
        f"base_url = '{engine.root_url}'\n" + extra
    )
