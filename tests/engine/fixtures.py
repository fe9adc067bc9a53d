"""pytest fixtures for the real engine: llama.cpp's server on the tiny generated model.

Use them from tests/conftest.py, either as a plugin (one line, nothing to keep in sync):

    pytest_plugins = ["tests.engine.fixtures"]

or by importing the names:

    from tests.engine.fixtures import llama_engine, make_llama_engine, tiny_model_path

Fixtures (all sync; pytest-trio's trio_mode lets async tests use them too):
  tiny_model_path    session: Path of the GGUF, written once into a session tmp dir.
  llama_engine       session: one running LlamaServer shared by every test (alias
                     "tiny-llama", /v1/embeddings on, concurrent requests queue up rather than
                     cutting each other's streams). Do not kill or stop it: use
                     make_llama_engine for an engine of your own.
  make_llama_engine  function: `make_llama_engine(**LlamaServer options) -> LlamaServer`,
                     started; every engine it made is stopped at teardown. For fault tests
                     (`.kill()` mid-stream), other chat formats, an API key, ...

`require_llama()` skips the calling test when llama-cpp-python[server] (or gguf/numpy) is not
usable with this interpreter; with GATE_STRICT_SKIPS=1 (CI) the skip becomes a failure.

This module imports nothing optional at import time, so importing it from conftest.py never
breaks a checkout without the engine. It is both imported and loaded as a plugin, so pytest
must not try to assertion-rewrite it (it has no asserts): PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.engine.llama_server import LlamaServer

__all__ = ["llama_engine", "make_llama_engine", "require_llama", "tiny_model_path"]

_SERVER_IMPORT_CHECK = "import llama_cpp, llama_cpp.server.app, uvicorn"


@functools.cache
def _llama_unusable_reason() -> str | None:
    """Why the engine cannot run here, or None. Checked once per session.

    The server runs as `sys.executable -m llama_cpp.server`, so the check imports it in a
    child process of that same interpreter: it sees a broken native build as well as a
    missing package, and keeps the server's heavy imports (and their warnings) out of the
    pytest process, where filterwarnings=error would turn them into errors.
    """
    for module, package in (("gguf", "gguf"), ("numpy", "numpy"), ("llama_cpp", "llama-cpp")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'llama-cpp-python[server]' gguf)"
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SERVER_IMPORT_CHECK],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"`{_SERVER_IMPORT_CHECK}` did not finish within 120 s"
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        return f"llama-cpp-python[server] cannot be imported: {lines[-1]}"
    return None


def require_llama() -> None:
    """Skip the calling test (with the reason) unless the llama.cpp engine can run here."""
    reason = _llama_unusable_reason()
    if reason is not None:
        pytest.skip(f"real engine unavailable: {reason}")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight llama GGUF, written once per session (~20 ms, ~0.5 MB)."""
    require_llama()
    from tests.engine.tiny_model import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-model") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama_engine(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """One llama.cpp server for the whole session (starts in about a second)."""
    from tests.engine.llama_server import LlamaServer

    with LlamaServer(tiny_model_path, log_dir=tmp_path_factory.mktemp("llama-engine")) as server:
        yield server


@pytest.fixture
def make_llama_engine(
    tiny_model_path: Path, tmp_path: Path
) -> Iterator[Callable[..., LlamaServer]]:
    """A factory of private engines, each started on its own port and stopped at teardown."""
    from tests.engine.llama_server import LlamaServer

    servers: list[LlamaServer] = []

    def make(model_path: Path | None = None, **options: Any) -> LlamaServer:
        options.setdefault("log_dir", tmp_path)
        server = LlamaServer(model_path or tiny_model_path, **options)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
