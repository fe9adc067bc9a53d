"""The web UI's file handler, called as ASGI: which paths give which file, and none other."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gate.services.control.web_ui import WEB_ROOT, StaticFiles, mount_web_ui
from gate.services.http.router import Router


async def get(app, path: str, *, method: str = "GET", headers=()) -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    with trio.fail_after(5):
        await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def site(tmp_path: Path) -> StaticFiles:
    (tmp_path / "pages").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html>index")
    (tmp_path / "app.js").write_text("export {};")
    (tmp_path / "pages" / "a.js").write_text("export const a = 1;")
    (tmp_path / "notes.md").write_text("not a type we serve")
    (tmp_path / ".hidden.js").write_text("secret")
    (tmp_path.parent / "outside.js").write_text("outside")
    return StaticFiles(tmp_path)


# path -> the file's text, or None for a 404
PATHS = [
    ("/", "<!doctype html>index"),
    ("/ui/", "<!doctype html>index"),
    ("/ui/index.html", "<!doctype html>index"),
    ("/ui/app.js", "export {};"),
    ("/ui/pages/a.js", "export const a = 1;"),
    ("/app.js", None),  # only under the prefix
    ("/ui/notes.md", None),  # not a served type
    ("/ui/.hidden.js", None),
    ("/ui/../outside.js", None),
    ("/ui/pages/../app.js", None),  # a name, not a path to resolve
    ("/ui/pages/../../outside.js", None),
    ("/ui/%2e%2e/outside.js", None),
    ("/ui/..\\outside.js", None),
    ("/ui//app.js", None),
    ("/ui/APP.JS", None),
    ("/ui/app.js/", None),
    ("/ui/app.js\x00", None),
]


@pytest.mark.parametrize(("path", "text"), PATHS)
async def test_exact_names_only(site: StaticFiles, path: str, text: str | None) -> None:
    status, _, body = await get(site, path)
    if text is None:
        assert status == 404
    else:
        assert (status, body.decode()) == (200, text)


async def test_types_etag_and_headers(site: StaticFiles) -> None:
    status, headers, _ = await get(site, "/ui/pages/a.js")
    assert status == 200 and headers[b"content-type"] == b"text/javascript; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"]
    etag = headers[b"etag"]
    status, _, body = await get(site, "/ui/pages/a.js", headers=[(b"if-none-match", etag)])
    assert (status, body) == (304, b"")
    other = [(b"if-none-match", b'"stale", ' + etag)]
    assert (await get(site, "/ui/pages/a.js", headers=other))[0] == 304
    assert (await get(site, "/ui/app.js", headers=[(b"if-none-match", etag)]))[0] == 200
    status, headers, body = await get(site, "/ui/app.js", method="HEAD")
    assert status == 200 and body == b"" and headers[b"content-length"] == b"10"


async def test_mounted_beside_the_api_routes(site: StaticFiles) -> None:
    router = Router()

    async def health(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    router.add("GET", "/health", health)
    router.add_prefix("GET", "/v1/models/", health)
    mount_web_ui(router, site)
    assert (await get(router, "/"))[0] == 200
    assert (await get(router, "/ui/app.js"))[0] == 200
    status, headers, _ = await get(router, "/ui")
    assert status == 308 and headers[b"location"] == b"/ui/"
    assert (await get(router, "/health"))[2] == b"ok"
    assert (await get(router, "/v1/models/x"))[2] == b"ok"
    assert (await get(router, "/v1/nothing"))[0] == 404
    assert (await get(router, "/ui/app.js", method="POST"))[0] == 405


def test_the_package_holds_the_ui() -> None:
    files = StaticFiles(WEB_ROOT).files
    assert {"index.html", "app.js", "style.css", "lib/rpc.js", "pages/setup.js"} <= set(files)
    index = files["index.html"].body.decode()
    # Everything the page loads is its own: nothing from a CDN, no external font.
    assert "http://" not in index and "https://" not in index
    assert all(b"@import" not in f.body and b"url(http" not in f.body for f in files.values())
