"""llama.cpp's OpenAI-compatible server (`llama_cpp.server`, llama-cpp-python) as a real engine.

`LlamaServer` runs `python -m llama_cpp.server` on a free loopback port in a child process,
with its output in a log file (never a pipe that nobody reads), and waits until
`GET /v1/models` answers. It is plain sync code (subprocess + httpx), usable from sync
fixtures, from trio tests and from scripts alike.

    with LlamaServer(model_path) as engine:
        client = openai.OpenAI(base_url=engine.base_url, api_key="unused")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import httpx

MODEL_ALIAS = "tiny-llama"

# The child gets a whitelisted environment. llama_cpp.server reads more than its command
# line: uvicorn's HOST/PORT override --host/--port, CONFIG_FILE replaces the whole command
# line, and every settings field (API_KEY, N_CTX, MODEL, VERBOSE, ...) is a pydantic
# BaseSettings field read from the environment (case-insensitively) when it is not given as
# a flag: an API_KEY exported in a CI job would silently turn on the engine's auth.
_ENV_PASSED = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "TEMP", "TMP"}
_ENV_PREFIXES_PASSED = ("LC_", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "GGML_", "OMP_")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if someone takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EngineStartError(RuntimeError):
    """The engine exited or did not answer in time; the message carries its log's tail."""


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Last resort (garbage collection / interpreter exit): never leave an engine behind."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class LlamaServer:
    """One `llama_cpp.server` child process serving one GGUF model under the alias `model`.

    Options (all map to llama_cpp.server flags):
      n_ctx          context window in tokens (the tiny model was trained "for" 2048).
      n_threads      threads for generation and prompt processing; 1 by default because the
                     test machines have 2 cores and the tests run beside the engine.
      seed           the engine's initial sampling seed (requests may pass their own `seed`).
      embedding      also serve /v1/embeddings (mean pooling, from the model's metadata).
                     Chat and completions keep working with it on (test_engine.py checks).
      chat_format    None: the model's own `tokenizer.chat_template` (llama-cpp-python's
                     Jinja2 handler, which already honours a forced `tool_choice`);
                     "chatml-function-calling": also `tool_choice="auto"`, non-streamed only.
      interrupt_requests
                     llama_cpp.server's default (True) ends a running stream early, with a
                     normal `[DONE]` and no finish_reason, as soon as another request arrives.
                     Off by default here: concurrent requests wait their turn (the engine
                     serves one at a time) and every stream runs to its end.
      api_key        if set, the engine requires `Authorization: Bearer <api_key>`.
      extra_args     more flags, passed through verbatim.
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        log_dir: Path | str | None = None,
        model: str = MODEL_ALIAS,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int = 0,
        embedding: bool = True,
        chat_format: str | None = None,
        interrupt_requests: bool = False,
        api_key: str | None = None,
        verbose: bool = True,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.model_path = Path(model_path)
        self.model = model
        self.host = host
        self.port = 0
        self._fixed_port = port  # None: a free port is picked at start
        self.api_key = api_key
        self.start_timeout = start_timeout
        self._options = {
            "model_alias": model,
            "n_ctx": str(n_ctx),
            "n_threads": str(n_threads),
            "n_threads_batch": str(n_threads),
            "seed": str(seed),
            "embedding": str(embedding).lower(),
            "interrupt_requests": str(interrupt_requests).lower(),
            # mlock of a 0.5 MB model buys nothing and can fail under a low RLIMIT_MEMLOCK.
            "use_mlock": "false",
            "verbose": str(verbose).lower(),
        }
        if chat_format is not None:
            self._options["chat_format"] = chat_format
        if api_key is not None:
            self._options["api_key"] = api_key
        self._extra_args = list(extra_args)
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._own_log_dir: Path | None = None  # made by _spawn() when no log_dir is given
        self._log_name = f"llama-server-{os.getpid()}-{id(self):x}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.startup_seconds = 0.0

    @property
    def log_path(self) -> Path:
        """The engine's stdout+stderr. Without a log_dir it lives in a temp dir of its own,
        created at start and removed by stop() (kill() keeps it)."""
        log_dir = self._log_dir or self._own_log_dir or Path(tempfile.gettempdir())
        return log_dir / self._log_name

    # -- addresses -------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """http://127.0.0.1:PORT (the /extras/* endpoints live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1, what an OpenAI client takes as base_url."""
        return f"{self.root_url}/v1"

    def command(self, port: int) -> list[str]:
        """The exact command line the engine is started with."""
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path)]
        args += ["--host", self.host, "--port", str(port)]
        for key, value in self._options.items():
            args += [f"--{key}", value]
        return args + self._extra_args

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k in _ENV_PASSED or k.startswith(_ENV_PREFIXES_PASSED)
        }
        env["PYTHONUNBUFFERED"] = "1"  # the log file shows what happened up to a crash
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LlamaServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        if not self.model_path.is_file():
            raise FileNotFoundError(self.model_path)
        began = time.monotonic()
        # A port picked by bind(0) may be taken before the child binds it: try a few.
        for attempt in range(3):
            self.port = self._fixed_port or free_port(self.host)
            self._spawn()
            try:
                self._wait_ready(began + self.start_timeout)
            except EngineStartError:
                if attempt < 2 and "address already in use" in self.log_tail().lower():
                    self._stop_process(timeout=5)
                    continue
                self._stop_process(timeout=5)
                raise
            break
        self.startup_seconds = time.monotonic() - began
        return self

    def restart(self, timeout: float = 10.0) -> LlamaServer:
        """Stop the engine if it still runs, then start it again on the same port.

        For "the engine went away and came back" tests: clients keep the same base_url.
        """
        if not self.port:
            raise RuntimeError("never started: use start()")
        self._stop_process(timeout)
        began = time.monotonic()
        self._spawn()
        try:
            self._wait_ready(began + self.start_timeout)
        except EngineStartError:
            self._stop_process(timeout=5)
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _spawn(self) -> None:
        if self._log_dir is None and self._own_log_dir is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="llama-server-"))
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command(self.port))}\n".encode())
            log.flush()
            # The child inherits its own copy of the descriptor; ours closes right away.
            self.proc = subprocess.Popen(
                self.command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # a terminal's Ctrl-C goes to pytest, not here too
            )
        self._finalizer = weakref.finalize(self, _reap, self.proc)

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=2.0, headers=headers) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise EngineStartError(
                        f"llama_cpp.server exited with {code} before it answered; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(f"{self.base_url}/models")
                except httpx.TransportError:
                    pass
                else:
                    if response.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise EngineStartError(
                        f"llama_cpp.server did not answer GET /v1/models within "
                        f"{self.start_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _stop_process(self, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._finalizer is not None:
            self._finalizer.detach()
        self.proc = None
        return proc.returncode

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code. Idempotent."""
        code = self._stop_process(timeout)
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None
        return code

    def kill(self) -> int | None:
        """SIGKILL now (a crashed engine mid-stream, for fault tests) and reap the process.

        The object stays usable for `log_tail()`; `stop()` afterwards is a no-op apart from
        cleaning up.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LlamaServer {self.model!r} {self.base_url} {state}>"
