"""The web UI's files: GET / and GET /ui/<file>, from the package's gate/web directory.

The UI is plain ES modules and CSS with no build step, so serving it is serving files.
They are read once, when the node starts (a few tens of KB), so a request does no disk
IO and the set of servable names is fixed: a name that is not one of those files is a
404, whatever `..`, `%2e` or backslash it holds, and nothing outside gate/web can be
reached. Routing between pages happens in the browser (`#/peers`), so the server never
has to guess which paths are pages.

Every answer says `Cache-Control: no-cache` with an ETag, so a browser revalidates and
an upgraded Gate is never run with yesterday's scripts; a Content-Security-Policy
allows scripts, styles and connections from this origin only, which keeps a script
injected through displayed data (a model name, a log line) from running, and the UI
out of other sites' frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gate.services.http.router import Receive, Router, Scope, Send

__all__ = ["WEB_ROOT", "StaticFiles", "mount_web_ui"]

WEB_ROOT: Final = Path(__file__).resolve().parents[2] / "web"  # gate/web
PREFIX: Final = "/ui/"
INDEX: Final = "index.html"

CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",  # module scripts need a JavaScript type
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}
SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: bytes
    etag: bytes


class StaticFiles:
    """An ASGI handler for the files under `root`; `/` and the bare prefix give index.html."""

    def __init__(self, root: Path = WEB_ROOT, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.files: dict[str, _File] = {}
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            kind = CONTENT_TYPES.get(path.suffix)
            if kind is None or not path.is_file() or name.startswith(".") or "/." in name:
                continue
            body = path.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
            self.files[name] = _File(body, kind, etag)

    def lookup(self, path: str) -> _File | None:
        if path in ("/", self.prefix):
            return self.files.get(INDEX)
        if not path.startswith(self.prefix):
            return None
        return self.files.get(path[len(self.prefix) :])  # exact names only: no traversal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        file = self.lookup(scope["path"])
        if file is None:
            await _plain(send, 404, b"not found\n")
            return
        headers = [(b"etag", file.etag), *SECURITY_HEADERS]
        if _etag_matches(scope, file.etag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [
            (b"content-type", file.content_type),
            (b"content-length", str(len(file.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else file.body
        await send({"type": "http.response.body", "body": body})


def mount_web_ui(router: Router, files: StaticFiles | None = None) -> StaticFiles:
    """Serve the UI at / and under /ui/; other routes (/v1, /rpc, /health) are untouched,
    as the Router matches exact paths first and /ui/ is a prefix of nothing else."""
    files = files or StaticFiles()
    for method in ("GET", "HEAD"):
        router.add(method, "/", files)
        router.add(method, PREFIX, files)
        router.add(method, PREFIX.rstrip("/"), _redirect_to_prefix)
        router.add_prefix(method, PREFIX, files)
    return files


async def _redirect_to_prefix(scope: Scope, receive: Receive, send: Send) -> None:
    # /ui -> /ui/: the address people type works too.
    await send(
        {
            "type": "http.response.start",
            "status": 308,
            "headers": [(b"location", PREFIX.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _etag_matches(scope: Scope, etag: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return value.strip() == b"*" or etag in (v.strip() for v in value.split(b","))
    return False


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
