"""A stand-in for a local engine: answers the model listings the way Ollama (/api/tags)
and OpenAI-compatible servers (/v1/models) do, and nothing else.

For the discovery tests: looking for an engine only lists its models, so a listing is
all an engine needs to be found (the real engine serves the tests that send requests).
"""

from __future__ import annotations

import http.server
import json
import threading

MODEL = "fake-model"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        listings = {
            "/api/tags": {"models": [{"name": MODEL}]},
            "/v1/models": {"object": "list", "data": [{"id": MODEL, "object": "model"}]},
        }
        if self.path not in listings:
            self.send_error(404)
            return
        body = json.dumps(listings[self.path]).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeEngine(http.server.ThreadingHTTPServer):
    """`with FakeEngine(port) as engine:` serves on 127.0.0.1:port (0: any) until the end."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> FakeEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()
