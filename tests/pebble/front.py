"""A loopback HTTPS front to a running pebble, for the two things pebble 2.4 (the Debian
package the tests use) cannot do: rate limits (it never answers 429 `rateLimited` with
a Retry-After, RFC 8555 §6.6) and renewal information (ARI, RFC 9773: its directory has
no `renewalInfo`; pebble serves it from 2.10 on, which no package here has). A test
double for those two answers only, and so named: everything else is pebble's.

The node's directory URL is the front's. The front serves pebble's own directory with
`renewalInfo` pointing at itself, and, while `refuse_orders` is set, `newOrder` too:
that one answers 429 with the problem document and `Retry-After` (the node's JWS is not
checked: a refusal needs none). Every other request goes straight to pebble, whose URLs
the directory keeps (a JWS names the URL it was signed for, so nothing signed can pass
through a proxy). The renewal window is the test's to set: `window` for any
certificate, `windows` for one (by its ARI identifier), `ari_retry_after`; the front
records which identifier it was asked about, and when.
"""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
import urllib.request

from tests.pebble.ca import Pebble, free_port

_RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


class AcmeFront:
    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.directory_url = f"{self.url}/dir"
        self.refuse_orders: int | None = None  # the Retry-After (s) of a refused order
        self.refused: list[datetime.datetime] = []  # when each order was refused
        self.window: tuple[datetime.datetime, datetime.datetime] | None = None
        self.windows: dict[str, tuple[datetime.datetime, datetime.datetime]] = {}
        self.ari_retry_after: int | None = None
        self.ari_asked: list[tuple[datetime.datetime, str]] = []  # when, which certificate
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> AcmeFront:
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/dir":
                    self._json(200, front._directory())
                elif self.path.startswith("/renewal-info/") and front.window is not None:
                    cert_id = self.path.removeprefix("/renewal-info/")
                    front.ari_asked.append((datetime.datetime.now(datetime.UTC), cert_id))
                    start, end = front.windows.get(cert_id, front.window)
                    body = {"suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}}
                    headers = {}
                    if front.ari_retry_after is not None:
                        headers["Retry-After"] = str(front.ari_retry_after)
                    self._json(200, body, headers)
                else:
                    self._json(404, {"type": "urn:ietf:params:acme:error:malformed"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/order-plz" and front.refuse_orders is not None:
                    front.refused.append(datetime.datetime.now(datetime.UTC))
                    problem = {"type": _RATE_LIMITED, "detail": "too many certificates (front)"}
                    self._json(
                        429,
                        problem,
                        {"Retry-After": str(front.refuse_orders)},
                        "application/problem+json",
                    )
                else:
                    self._json(404, {"type": "urn:ietf:params:acme:error:malformed"})

            def _json(
                self,
                status: int,
                body: object,
                headers: dict[str, str] | None = None,
                content_type: str = "application/json",
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # pebble's own serving certificate (for 127.0.0.1): the node's acme_ca_bundle
        # trusts both alike.
        workdir = self.pebble.workdir
        context.load_cert_chain(workdir / "pebble-cert.pem", workdir / "pebble-key.pem")
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _directory(self) -> dict[str, object]:
        context = ssl.create_default_context(cafile=str(self.pebble.ca_bundle))
        with urllib.request.urlopen(self.pebble.directory_url, timeout=10, context=context) as r:
            directory: dict[str, object] = json.loads(r.read())
        directory["renewalInfo"] = f"{self.url}/renewal-info"
        if self.refuse_orders is not None:
            directory["newOrder"] = f"{self.url}/order-plz"
        return directory


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
