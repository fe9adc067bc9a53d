"""A recording reverse proxy: what a real client sends, kept request by request.

    python -m tests.clients.recorder --upstream http://127.0.0.1:31145 --out DIR [--port N]

Each request is forwarded to the upstream (Gate) unchanged and its answer streamed back
chunk by chunk, so the client runs its whole turn; the request (method, path, headers,
JSON body) is written to DIR/NNN.json. This is how tests/fixtures/clients/ were made
(then cleaned of machine-specific text by hand); it runs in no test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def serve(upstream: str, out: Path, port: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counter = itertools.count(1)
    lock = threading.Lock()
    client = httpx.Client(base_url=upstream, timeout=600)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                decoded = json.loads(body) if body else None
            except ValueError:
                decoded = body.decode(errors="replace")
            with lock:
                number = next(counter)
            record = {"method": self.command, "path": self.path, "headers": headers}
            record["body"] = decoded
            (out / f"{number:03d}.json").write_text(json.dumps(record, indent=1))
            request = client.build_request(self.command, self.path, headers=headers, content=body)
            response = client.send(request, stream=True)
            try:
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for chunk in response.iter_raw():
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            finally:
                response.close()

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        print(f"recording on http://127.0.0.1:{server.server_port}", flush=True)
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve(args.upstream, args.out, args.port)


if __name__ == "__main__":
    main()
