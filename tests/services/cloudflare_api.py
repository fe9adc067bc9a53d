"""A scripted loopback stand-in for Cloudflare's API v4 DNS records endpoints.

No real Cloudflare is reachable here (nor should a test spend a zone's quota), so
`FakeCloudflare` follows the API's documented requests and answers for DNS records:
`POST /zones/{zone}/dns_records`, `GET` with `type`, `name.exact`, `content.exact`,
`comment.exact` (case-insensitive), `page` and `per_page` and a `result_info`,
`DELETE /zones/{zone}/dns_records/{id}` (404 with error 81044 for a record that does not
exist), the `{success, errors, messages, result}` envelope, a bearer token (403 with
error 10000 otherwise), and scripted failures: 403, 429 with Retry-After, 5xx, and a 5xx
sent after the record was created (an answer lost, as a gateway timeout loses one). It
runs in a thread of the test's process, so a relay process can use it too."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

DOMAIN = "relay.test"
TOKEN = "cf-test-token"
ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
COMMENT = "gate relay r3layid"  # what a relay's records carry: `gate relay <relay-id>`


class FakeCloudflare:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.records: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []  # method, path, query
        # Scripted answers, taken in order by the first request of their method:
        # (method, status, headers, create_anyway).
        self.script: list[tuple[str, int, dict[str, str], bool]] = []
        self.max_per_page = 100
        self.post_delay = 0.0  # seconds between creating a record and answering
        self.list_delay = 0.0  # seconds between a list request and its listing
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self)

            do_POST = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.requests if m == method)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length") or 0)
        body = json.loads(request.rfile.read(length)) if length else None
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        if request.command == "GET" and self.list_delay:
            time.sleep(self.list_delay)
        with self.lock:
            self.requests.append((request.command, url.path, query))
            status, payload, headers = self.answer(request, url.path, query, body)
        if request.command == "POST" and self.post_delay:
            time.sleep(self.post_delay)
        data = json.dumps(payload).encode()
        request.send_response(status)
        for name, value in {**headers, "content-type": "application/json"}.items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def answer(self, request, path, query, body):
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 403, error(10000, "Authentication error"), {}
        scripted = next((s for s in self.script if s[0] == request.command), None)
        if scripted is not None:
            self.script.remove(scripted)
            _, status, headers, create_anyway = scripted
            if create_anyway:
                self.route(request.command, path, query, body)
            message = {403: "Unauthorized to access requested resource", 429: "Rate limited"}
            return status, error(status, message.get(status, "Internal error")), headers
        return (*self.route(request.command, path, query, body), {})

    def route(self, method, path, query, body):
        prefix = f"/client/v4/zones/{ZONE}/dns_records"
        if method == "POST" and path == prefix:
            if body.get("type") != "TXT" or not body.get("name") or "content" not in body:
                return 400, error(9000, "DNS name is invalid")
            record = {
                "id": uuid.uuid4().hex,
                "zone_id": ZONE,
                "zone_name": DOMAIN,
                "name": body["name"],
                "type": "TXT",
                "content": body["content"],
                "ttl": body.get("ttl", 1),
                "comment": body.get("comment"),
                "proxiable": False,
                "proxied": False,
            }
            self.records[record["id"]] = record
            return 200, ok(record)
        if method == "GET" and path == prefix:
            found = [
                r
                for r in self.records.values()
                if query.get("type", r["type"]) == r["type"]
                and query.get("name.exact", r["name"]) == r["name"]
                and query.get("content.exact", r["content"]) == r["content"]
                and query.get("comment.exact", str(r["comment"])).lower()
                == str(r["comment"]).lower()
            ]
            per_page = min(int(query.get("per_page", 100)), self.max_per_page)
            page = int(query.get("page", 1))
            total_pages = max(1, -(-len(found) // per_page))
            shown = found[(page - 1) * per_page : page * per_page]
            info = {
                "page": page,
                "per_page": per_page,
                "count": len(shown),
                "total_count": len(found),
                "total_pages": total_pages,
            }
            return 200, {**ok(shown), "result_info": info}
        if method == "DELETE" and path.startswith(prefix + "/"):
            record_id = path.rsplit("/", 1)[1]
            if self.records.pop(record_id, None) is None:
                return 404, error(81044, "Record does not exist.")
            return 200, ok({"id": record_id})
        return 404, error(7003, "Could not route to " + path)

    def __enter__(self) -> FakeCloudflare:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(result):
    return {"success": True, "errors": [], "messages": [], "result": result}


def error(code: int, message: str):
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": []}
