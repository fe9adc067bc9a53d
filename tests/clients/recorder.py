"""A recording reverse proxy: what a real client sends, kept request by request.

    python -m tests.clients.recorder --upstream http://127.0.0.1:31145 --out DIR [--port N]
    python -m tests.clients.recorder --scrub RECORD.json --home H --cwd C > FIXTURE.json

Each request is forwarded to the upstream (Gate) unchanged and its answer streamed back
chunk by chunk, so the client runs its whole turn; the request (method, path, headers,
JSON body) is written to DIR/NNN.json. `--scrub` then takes out what belongs to the
machine or the session (see `scrub`). This is how tests/fixtures/clients/ were made; it
runs in no test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
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


# Session, device and installation ids; the date; the kernel's version string.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
_UNIX_MS = re.compile(r'("turn_started_at_unix_ms\\?":)\d+')
_KERNEL = re.compile(r"OS Version: Linux [^\s\\]+")
SECRET_HEADERS = {"authorization", "x-api-key", "cookie"}


def scrub(record: dict, home: str, cwd: str) -> dict:
    """The record without this machine's paths, ids, date or secrets; the shape untouched."""
    headers = {k: v for k, v in record["headers"].items() if k.lower() not in SECRET_HEADERS}
    text = json.dumps({**record, "headers": headers})
    # cwd first: it may lie under home, and Claude Code also writes it dashed (-tmp-x-y).
    text = text.replace(cwd, "/home/user/project").replace(home, "/home/user")
    text = text.replace(cwd.replace("/", "-"), "-home-user-project")
    text = _UUID.sub("00000000-0000-0000-0000-000000000000", text)
    text = _HEX64.sub("0" * 64, text)
    text = _DATE.sub("2026-01-01", text)
    text = _UNIX_MS.sub(r"\g<1>1767225600000", text)
    text = _KERNEL.sub("OS Version: Linux 6.1.0", text)
    return json.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scrub", type=Path, help="a record to clean, printed on stdout")
    parser.add_argument("--home", help="the client's HOME when it was recorded")
    parser.add_argument("--cwd", help="the client's working directory then")
    args = parser.parse_args()
    if args.scrub:
        record = json.loads(args.scrub.read_text())
        json.dump(scrub(record, args.home, args.cwd), sys.stdout, indent=1, ensure_ascii=False)
        print()
    else:
        serve(args.upstream, args.out, args.port)


if __name__ == "__main__":
    main()
