"""The web UI in a real headless Chromium (Playwright) against a real `gate serve`.

The browser is the system's `chromium` (never a downloaded one), headless with no
background networking (LAUNCH_ARGS: this machine's closed network refuses what Chromium
would otherwise dial at start); without it these tests skip, which GATE_STRICT_SKIPS=1
(CI) turns into failures.
Every test watches the page for console errors, uncaught exceptions and failed
requests. Screenshots of each page, desktop and phone size, are written to
$GATE_ARTIFACTS (default tests/artifacts/ui/) for people to look at.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.pebble.ca import have_pebble

from .conftest import engine_config
from .gate_process import wait_for
from .test_gateway import HI, MODEL
from .test_relay import DOMAIN as RELAY_DOMAIN
from .test_relay import relay_and_node  # noqa: F401  (the fixture)
from .test_relay_acme import AcmeWorld
from .test_rpc import OTHER_NODE, result, rpc

pytestmark = pytest.mark.e2e
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
expect = playwright.expect

CHROMIUM = Path("/usr/bin/chromium")
# A made-up name that this browser resolves to 127.0.0.1: what a DNS-rebinding attack
# does to a page's own name (see test_a_rebound_name_and_another_origin_are_refused).
REBOUND = "rebound.test"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("GATE_ARTIFACTS") or Path(__file__).parents[1] / "artifacts" / "ui")
TIMEOUT_MS = 15_000

# Each page: its address, its heading, and a selector that shows it has loaded its data.
PAGES = [
    ("dashboard", "#/", "Dashboard", "#node-status dt:text('Node ID')"),
    ("peers", "#/peers", "Peers", "#own-add-command"),
    ("providers", "#/providers", "Providers", "#provider-list article"),
    ("config", "#/config", "Config", "#section-database"),
    ("logs", "#/logs", "Logs", "#log-table tbody tr"),
    ("keys", "#/keys", "API keys", "#key-list :is(table, .empty)"),
    ("setup", "#/setup", "Setup", "#setup-node-id"),
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/system-deps.sh installs chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine) + "[security]\n")


@dataclass
class Problems:
    """What went wrong in the page: console errors, exceptions, failed requests, and
    any request to anywhere but the node (the UI must work offline: no CDN, no font)."""

    origin: str
    items: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on(
            "request",
            lambda r: (
                r.url.startswith((self.origin + "/", "data:"))
                or self.items.append(f"request elsewhere: {r.url}")
            ),
        )
        page.on("console", lambda m: m.type == "error" and self.items.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.items.append(f"exception: {e}"))
        page.on("requestfailed", self._failed)
        page.on(
            "response",
            lambda r: r.status >= 400 and self.items.append(f"HTTP {r.status}: {r.url}"),
        )

    def _failed(self, request) -> None:
        # The event stream never ends by itself: a reload ends it, and that is no fault.
        if request.url.endswith("/rpc/events") and request.failure == "net::ERR_ABORTED":
            return
        self.items.append(f"request failed: {request.method} {request.url} {request.failure}")


@contextlib.contextmanager
def open_ui(
    browser, gate, *, viewport=DESKTOP, path="/#/", permissions=()
) -> Iterator[tuple[object, Problems]]:
    """A fresh browser context (no cookies or storage) on the gate's UI."""
    context = browser.new_context(viewport=viewport, permissions=list(permissions))
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems = Problems(gate.url)
    problems.watch(page)
    try:
        page.goto(gate.url + path)
        yield page, problems
    finally:
        context.close()


def wait_live(page) -> None:
    """Until the event stream is connected (the badge in the header says so)."""
    expect(page.locator("#connection")).to_have_text("Live", timeout=TIMEOUT_MS)


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


def shoot(page, name: str) -> None:
    page.screenshot(path=artifact(name), full_page=True)


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")


def chat(gate, **headers) -> httpx.Response:
    return httpx.post(
        f"{gate.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 4},
        headers=headers,
        timeout=30,
    )


def field_of(page, name: str):
    """The form field (label, input, hint, error) around the input named `name`."""
    return page.locator(f".field:has([name='{name}'])")


def visit_every_page(page, problems: Problems, viewport: str) -> None:
    for name, path, heading, loaded in PAGES:
        page.locator(f"nav.pages a[href='{path}']").click()
        expect(page.locator("main h1")).to_have_text(heading)
        expect(page.locator(f"nav.pages a[href='{path}']")).to_have_attribute(
            "aria-current", "page"
        )
        expect(page.locator(loaded).first).to_be_visible()
        assert page.title() == f"{heading} · Gate"
        shoot(page, f"{name}-{viewport}")
        if viewport == "phone":
            assert no_horizontal_overflow(page), f"{name} is wider than a phone"
        assert problems.items == [], f"on {name}: {problems.items}"


# --- every page -------------------------------------------------------------------------


def test_every_page_loads_without_errors(browser, gate):
    # Something on each page: a request, a peer, a key (and log lines from the start).
    assert chat(gate).status_code == 200
    result(gate, "add_peer", {"peer": f"{OTHER_NODE}@127.0.0.1:9"})
    result(gate, "create_api_key", {"name": "laptop"})
    with open_ui(browser, gate) as (page, problems):
        wait_live(page)
        visit_every_page(page, problems, "desktop")


def test_every_page_fits_a_phone_screen(browser, gate):
    assert chat(gate).status_code == 200
    result(gate, "add_peer", {"peer": f"{OTHER_NODE}@127.0.0.1:9"})
    result(gate, "create_api_key", {"name": "a-rather-long-key-name-for-a-phone"})
    with open_ui(browser, gate, viewport=PHONE) as (page, problems):
        wait_live(page)
        expect(page.locator("#requests tbody tr").first).to_be_visible()
        visit_every_page(page, problems, "phone")


# --- dashboard --------------------------------------------------------------------------


def test_a_request_appears_on_the_dashboard_live(browser, gate):
    with open_ui(browser, gate) as (page, problems):
        wait_live(page)
        expect(page.locator("#node-status")).to_contain_text("1 of 1 healthy")
        expect(page.get_by_text("No requests yet")).to_be_visible()
        page.evaluate("window.notReloaded = true")
        assert chat(gate).status_code == 200
        row = page.locator("#requests tbody tr").first
        expect(row).to_contain_text(MODEL)
        expect(row.locator(".status")).to_have_text("200")
        expect(row).to_contain_text("llama")  # served by
        expect(row).to_contain_text("127.0.0.1")  # the client
        expect(row.locator("td.num").first).to_have_text(re.compile(r"^\d+ ms$|^\d+\.\d\d s$"))
        # The charts took the request in: a latency point and its figure.
        expect(page.locator("#chart-latency .chart-latest")).to_have_text(re.compile(r"^\d+ ms$"))
        expect(page.locator("#chart-tokens .chart-latest")).not_to_have_text("0.0 tok/s")
        assert page.evaluate("window.notReloaded") is True
        assert problems.items == []


def test_the_dashboard_shows_the_relay_and_the_public_url(browser, relay_and_node):  # noqa: F811
    _, _, node, node_id, _, _, relay_address = relay_and_node
    relay_id = relay_address.partition("@")[0]
    with open_ui(browser, node) as (page, problems):
        fact = page.locator(f"#node-status [data-relay='{relay_id}']")
        expect(fact.locator("dt")).to_have_text(f"Relay {relay_id[:8]}…")
        expect(fact.locator(".badge")).to_have_text("registered")
        expect(fact.locator("code.url")).to_have_text(f"https://{node_id}.{RELAY_DOMAIN}")
        assert problems.items == []


def test_the_dashboard_shows_the_certificate_from_the_acme_ca(browser, tmp_path, gate_env):
    if not have_pebble():
        pytest.skip("scripts/system-deps.sh installs pebble")
    world = AcmeWorld(tmp_path, gate_env, None)
    try:
        world.start_node()
        wait_for(world.issued, "a certificate pebble issued", 60)
        relay_id = world.relays[0].address.partition("@")[0]
        assert world.node is not None
        with open_ui(browser, world.node) as (page, problems):
            fact = page.locator(f"#node-status [data-relay='{relay_id}'] .certificate")
            expect(fact.locator(".badge")).to_have_text("valid")
            expect(fact).to_contain_text("expires 20")
            assert problems.items == []
    finally:
        world.close()


# --- peers ------------------------------------------------------------------------------


def test_a_peer_is_added_and_removed_on_the_peers_page(browser, gate):
    with open_ui(browser, gate, path="/#/peers") as (page, problems):
        expect(page.get_by_text("No trusted peers yet.")).to_be_visible()
        own_id = result(gate, "node_status")["node_id"]
        expect(page.locator("#own-add-command")).to_have_text(f"gate peers add {own_id}")

        peer_input = page.get_by_label("Peer's node ID")
        peer_input.fill("garbage")
        page.get_by_role("button", name="Add peer").click()
        error = field_of(page, "peer").locator(".field-error")
        expect(error).to_contain_text("not a node id")
        expect(peer_input).to_have_attribute("aria-invalid", "true")

        peer_input.fill(f"{OTHER_NODE}@127.0.0.1:9")
        page.get_by_role("button", name="Add peer").click()
        expect(error).to_be_hidden()
        expect(page.get_by_role("status").filter(has_text="Trusted")).to_be_visible()
        row = page.locator(f"#peers tr[data-node-id='{OTHER_NODE}']")
        expect(row).to_be_visible()  # the node took it: the list comes from list_peers
        expect(row).to_contain_text("127.0.0.1:9")
        assert [p["node_id"] for p in result(gate, "list_peers")] == [OTHER_NODE]

        remove = row.get_by_role("button", name=f"Remove peer {OTHER_NODE}")
        remove.click()
        expect(remove).to_have_text("Confirm removal")  # one click alone removes nothing
        assert result(gate, "list_peers") != []
        remove.click()
        expect(row).to_have_count(0)
        expect(page.get_by_text("No trusted peers yet.")).to_be_visible()
        assert "garbage" not in str(result(gate, "get_config")["p2p"]["trusted_peers"])
        assert problems.items == []


# --- config -----------------------------------------------------------------------------


def test_an_invalid_config_value_is_shown_beside_its_field(browser, gate):
    config_file = Path(gate.args[gate.args.index("--config") + 1])
    before = config_file.read_text()
    with open_ui(browser, gate, path="/#/config") as (page, problems):
        port = page.locator("input[name='p2p.port']")
        port.fill("70000")
        page.get_by_role("button", name="Save changes").click()
        error = field_of(page, "p2p.port").locator(".field-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("p2p.port")
        expect(error).to_contain_text("65535")
        expect(port).to_have_attribute("aria-invalid", "true")
        port.scroll_into_view_if_needed()
        page.screenshot(path=artifact("config-error-desktop"))  # the view the user has
        expect(page.locator(".field-error:visible")).to_have_count(1)  # beside that field only
        assert config_file.read_text() == before  # nothing written

        port.fill("41146")
        page.get_by_role("button", name="Save changes").click()
        expect(error).to_be_hidden()
        saved = page.locator("#config-form .notice")
        expect(saved).to_contain_text("after a restart")
        expect(saved).to_contain_text("p2p.port")
        assert tomllib.loads(config_file.read_text())["p2p"]["port"] == 41146

        # A live key: applied at once, so no restart is asked for.
        page.locator("select[name='server.log_level']").select_option("debug")
        page.get_by_role("button", name="Save changes").click()
        expect(saved).to_have_text("Saved; in effect now.")
        assert tomllib.loads(config_file.read_text())["server"]["log_level"] == "debug"
        assert problems.items == []


def test_a_change_that_needs_a_restart_offers_one(browser, start_gate, llama_engine):
    # A fixed port: the restarted node must come back where the page is.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gate = start_gate(engine_config(llama_engine), bind=f"127.0.0.1:{port}")
    pid = gate.proc.pid
    with open_ui(browser, gate, path="/#/config") as (page, problems):
        restart = page.get_by_role("button", name="Restart Gate now")
        expect(restart).to_be_hidden()  # nothing waits for a restart yet
        page.locator("input[name='p2p.peer_burst']").fill("21")  # live: no restart
        page.get_by_role("button", name="Save changes").click()
        saved = page.locator("#config-form .notice")
        expect(saved).to_have_text("Saved; in effect now.")
        expect(restart).to_be_hidden()
        page.locator("input[name='server.drain_timeout']").fill("3")
        page.get_by_role("button", name="Save changes").click()
        expect(saved).to_contain_text("server.drain_timeout")
        clicked = time.monotonic()
        restart.click()
        expect(saved).to_contain_text("Gate restarted", timeout=30_000)
        expect(restart).to_be_hidden()
        since_click = time.monotonic() - clicked
        assert result(gate, "node_status")["uptime_s"] < since_click  # a new run...
        assert gate.proc.pid == pid  # ...in the same process, as `gate stop` expects
        assert problems.items == []


# --- API keys ---------------------------------------------------------------------------


def test_an_api_key_is_created_shown_once_and_revoked(browser, start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine) + "[security]\nrequire_api_keys = true\n")
    clipboard = ["clipboard-read", "clipboard-write"]
    with open_ui(browser, gate, path="/#/keys", permissions=clipboard) as (page, problems):
        expect(page.get_by_text("No keys yet.")).to_be_visible()
        page.get_by_label("Name").fill("ci")
        page.get_by_role("button", name="Create key").click()
        key = page.locator("#new-key-value").inner_text()
        assert key.startswith("gk_")
        expect(page.locator("#new-key")).to_contain_text("shown only this once")
        copy = page.get_by_role("button", name="Copy the new key")
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == key
        row = page.locator("#keys tbody tr").filter(has_text="ci")
        expect(row).to_contain_text("active")
        assert chat(gate, authorization=f"Bearer {key}").status_code == 200  # the key works

        page.reload()  # the key is never shown again
        expect(page.locator("#keys tbody tr")).to_have_count(1)
        assert key not in page.content()

        revoke = row.get_by_role("button", name="Revoke key ci")
        revoke.click()
        revoke.click()  # the confirmation
        expect(row).to_contain_text("revoked")
        expect(row.get_by_role("button")).to_have_count(0)
        assert chat(gate, authorization=f"Bearer {key}").status_code == 401
        assert problems.items == []


# --- logs -------------------------------------------------------------------------------


def test_logs_arrive_live_and_filter_by_level(browser, gate):
    with open_ui(browser, gate, path="/#/logs") as (page, problems):
        wait_live(page)
        rows = page.locator("#log-table tbody tr")
        expect(rows.filter(has_text="database open")).to_have_count(1)  # from the file

        page.get_by_label("Lowest level shown").select_option("warning")
        expect(rows.filter(has_text="database open")).to_have_count(0)
        # An info line: the node applies a peer added to gate.toml. It is in the log
        # (and so went out as an event) before the warning below is caused.
        result(gate, "add_peer", {"peer": OTHER_NODE})
        deadline = time.monotonic() + 10
        while not any(
            r["msg"] == "trusted peers updated" for r in result(gate, "get_logs", {"limit": 50})
        ):
            assert time.monotonic() < deadline, "the node did not apply the new peer"
            time.sleep(0.1)
        # A warning: an RPC call that names a foreign host is refused and logged.
        refused = httpx.post(
            f"{gate.url}/rpc",
            json={"jsonrpc": "2.0", "method": "node_status", "id": 1},
            headers={"host": "attacker.example"},
            timeout=10,
        )
        assert refused.status_code == 403
        warning = rows.filter(has_text="refused an RPC call")
        expect(warning).to_have_count(1)  # live: the page asked for nothing since
        expect(warning).to_have_attribute("data-level", "warning")
        expect(rows.filter(has_text="trusted peers updated")).to_have_count(0)  # filtered

        page.get_by_label("Lowest level shown").select_option("info")
        expect(rows.filter(has_text="trusted peers updated")).to_have_count(1)
        expect(rows.filter(has_text="database open")).to_have_count(1)
        expect(warning).to_have_count(1)
        assert problems.items == []


# --- setup ------------------------------------------------------------------------------


def test_setup_finds_the_engine_at_a_given_address_and_adds_it(browser, start_gate, llama_engine):
    gate = start_gate("[security]\n")  # no engine yet: a first run
    # Opened without a page in the address, a node with no engine shows Setup.
    with open_ui(browser, gate, path="/") as (page, problems):
        expect(page.locator("main h1")).to_have_text("Setup")
        node_id = result(gate, "node_status")["node_id"]
        expect(page.locator("#setup-node-id")).to_have_text(node_id)
        expect(page.locator("#setup-peer-command")).to_have_text(f"gate peers add {node_id}")

        page.get_by_label("Other addresses to try").fill(llama_engine.root_url)
        page.get_by_role("button", name="Search").click()
        found = page.locator(f"#discovered li[data-base-url='{llama_engine.root_url}']")
        expect(found).to_contain_text("found")
        expect(found).to_contain_text(MODEL)
        expect(found.get_by_label("Name")).to_have_value(re.compile(r"^engine-\d+$"))
        shoot(page, "setup-found-desktop")
        found.get_by_label("Name").fill("local-llama")
        found.get_by_role("button", name="Add").click()
        expect(found).to_contain_text("added as local-llama: healthy, 1 model(s)")

        (provider,) = result(gate, "list_providers")
        assert provider["name"] == "local-llama" and provider["healthy"]
        assert chat(gate).status_code == 200  # the node now serves the model

        page.locator("nav.pages a[href='#/providers']").click()
        card = page.locator("article[data-name='local-llama']")
        expect(card.locator(".badge")).to_have_text("healthy")
        expect(card).to_contain_text(MODEL)
        card.get_by_role("button", name="Test local-llama").click()
        expect(page.get_by_role("status").filter(has_text="local-llama is healthy")).to_be_visible()

        page.locator("nav.pages a[href='#/setup']").click()  # searched again: now known
        expect(found).to_contain_text("already added")
        assert problems.items == []


# --- control token ------------------------------------------------------------------------


def test_the_control_token_is_asked_for_and_used(browser, start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine) + "[security]\ncontrol_token = 's3cret'\n")
    with open_ui(browser, gate) as (page, _):
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        # The node answers: it waits for the token, it is not offline.
        expect(page.locator("#connection")).to_have_text("Waiting for the control token")
        page.keyboard.press("Escape")  # nothing works without it: the prompt stays
        expect(dialog).to_be_visible()
        token = page.get_by_role("textbox", name="Control token")
        token.fill("wrong")
        page.get_by_role("button", name="Unlock").click()
        expect(dialog.get_by_role("alert")).to_have_text("That token was not accepted.")
        shoot(page, "token-prompt-desktop")
        token.fill("s3cret")
        page.get_by_role("button", name="Unlock").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#node-status")).to_contain_text("1 of 1 healthy")
        wait_live(page)  # the event stream took the token too (?token=)
        assert chat(gate).status_code == 200
        expect(page.locator("#requests tbody tr").first).to_contain_text(MODEL)
        assert page.evaluate("sessionStorage.getItem('gate.controlToken')") == "s3cret"


# --- the control plane is not for other sites ---------------------------------------------


def test_a_rebound_name_and_another_origin_are_refused(browser, gate):
    port = int(gate.url.rsplit(":", 1)[1])
    shutdown = '{"jsonrpc": "2.0", "method": "node_shutdown", "id": 1}'
    context = browser.new_context()
    try:
        page = context.new_page()
        # DNS rebinding: a page loaded from rebound.test:PORT, a name now pointing at
        # 127.0.0.1, is same-origin with Gate as far as the browser can tell.
        page.goto(f"http://{REBOUND}:{port}/")
        statuses = page.evaluate(
            """async (body) => {
                const rpc = await fetch("/rpc", {method: "POST", body,
                    headers: {"content-type": "application/json"}});
                const events = await fetch("/rpc/events");
                return [rpc.status, events.status];
            }""",
            shutdown,
        )
        assert statuses == [403, 403]

        # Another site's page posting a "simple" request, which a browser sends without
        # asking first. The site is another local server: Chromium itself keeps public
        # sites from reaching loopback, but other browsers do not, nor do local pages.
        with other_site() as origin:
            page.goto(origin)
            with page.expect_response(f"{gate.url}/rpc") as response:
                page.evaluate(
                    """([url, body]) => fetch(url, {method: "POST", mode: "no-cors", body,
                        headers: {"content-type": "text/plain"}}).catch(() => null)""",
                    [f"{gate.url}/rpc", shutdown],
                )
            assert response.value.status == 403
    finally:
        context.close()
    reasons = [r.get("reason") for r in result(gate, "get_logs", {"level": "warning"})]
    assert "the Host header must be 127.0.0.1, localhost or [::1] with this port" in reasons
    assert reasons[-1] == "requests from other origins are refused"
    assert gate.proc.poll() is None  # still running
    assert httpx.get(f"{gate.url}/health", timeout=10).status_code == 200


@contextlib.contextmanager
def other_site() -> Iterator[str]:
    """Another web site on this machine (an HTTP server on another port); its origin."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title><p>another site</p>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the files themselves ---------------------------------------------------------------


def raw_get(url: str, target: str) -> bytes:
    """GET `target` byte for byte (an HTTP client would normalize `..` away)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_ui_files_are_served_with_types_etags_and_nothing_else(gate):
    index = httpx.get(f"{gate.url}/", timeout=10)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert index.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert '<script type="module" src="/ui/app.js">' in index.text
    assert httpx.get(f"{gate.url}/ui/", timeout=10).text == index.text
    moved = httpx.get(f"{gate.url}/ui", timeout=10)
    assert moved.status_code == 308 and moved.headers["location"] == "/ui/"

    script = httpx.get(f"{gate.url}/ui/pages/dashboard.js", timeout=10)
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert (
        httpx.get(f"{gate.url}/ui/style.css", timeout=10)
        .headers["content-type"]
        .startswith("text/css")
    )
    etag = script.headers["etag"]
    again = httpx.get(f"{gate.url}/ui/pages/dashboard.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    head = httpx.head(f"{gate.url}/ui/app.js", timeout=10)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"])

    for target in (
        "/ui/../pyproject.toml",
        "/ui/../services/control/web_ui.py",
        "/ui/%2e%2e/services/control/web_ui.py",
        "/ui/..%2fservices%2fweb.py",
        "/ui//etc/passwd",
        "/ui/pages/../../node.py",
        "/ui/nope.js",
    ):
        answer = raw_get(gate.url, target)
        assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:200])
    assert httpx.get(f"{gate.url}/nope", timeout=10).status_code == 404

    # The API's own routes are untouched.
    assert httpx.get(f"{gate.url}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{gate.url}/v1/models", timeout=10).json()["data"][0]["id"] == MODEL
    assert "gate_" in httpx.get(f"{gate.url}/metrics", timeout=10).text
    assert "result" in rpc(gate, "node_status")


def test_the_ui_can_be_turned_off(start_gate):
    gate = start_gate("[web]\nenabled = false\n")
    assert httpx.get(f"{gate.url}/", timeout=10).status_code == 404
    assert httpx.get(f"{gate.url}/ui/app.js", timeout=10).status_code == 404
    assert "result" in rpc(gate, "node_status")
