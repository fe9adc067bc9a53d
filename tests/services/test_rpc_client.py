"""The CLI's RPC client against scripted loopback servers: what it sends (Host,
the control token, JSON) and how it reads each kind of answer and failure."""

import contextlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from email.message import Message

import pytest

from gate.config import Config, SecurityConfig, ServerConfig
from gate.rpc_client import NOT_GATE, DaemonNotRunning, DaemonStopped, RpcCallError, RpcClient


class Script(http.server.BaseHTTPRequestHandler):
    """Answers as `server.answer` says; records each request's head and body."""

    server: "ScriptedServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.seen.append((self.command, self.path, self.headers, body))
        status, payload = self.server.answer
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # the event stream, chunked; `cut`: the connection drops mid-way
        self.server.seen.append((self.command, self.path, self.headers, b""))
        self.send_response(200)
        if self.path == "/health":
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in (b"event: hello\ndata: {}\n\n", b'event: log\ndata: {"msg": "x"}\n\n'):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if not self.server.cut:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


class ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Script)
        self.seen: list[tuple[str, str, Message, bytes]] = []
        self.answer: tuple[int, bytes] = (200, b'{"jsonrpc": "2.0", "id": 1, "result": 7}')
        self.cut = False


@contextlib.contextmanager
def scripted(host: str = "127.0.0.1") -> Iterator[ScriptedServer]:
    server = ScriptedServer(host)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def client_for(server: ScriptedServer, token: str = "") -> RpcClient:
    host, port = server.server_address[:2]
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config = Config(server=ServerConfig(bind=bind), security=SecurityConfig(control_token=token))
    return RpcClient(config, timeout=5)


def test_a_call_over_ipv6_with_the_control_token():
    with scripted("::1") as server:
        client = client_for(server, token="s3cret")
        assert client.call("node_status", {"a": 1}) == 7
        assert client.alive() is True
    port = server.server_address[1]
    assert client.base == f"http://[::1]:{port}"
    method, path, headers, body = server.seen[0]
    assert (method, path) == ("POST", "/rpc")
    assert headers["Host"] == f"[::1]:{port}"  # what the daemon's Host check accepts
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "method": "node_status",
        "id": 1,
        "params": {"a": 1},
    }


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (
            (200, b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}}'),
            -32601,
            "no",
        ),
        ((401, b"{}"), 401, "the daemon refused the control token (security.control_token)"),
        ((404, b"<html>nginx</html>"), NOT_GATE, "answered HTTP 404, not as a Gate daemon"),
        ((200, b'{"status": "ok"}'), NOT_GATE, "answered HTTP 200, not as a Gate daemon"),
    ],
)
def test_answers_that_are_errors(answer, code, message):
    with scripted() as server:
        server.answer = answer
        with pytest.raises(RpcCallError) as info:
            client_for(server).call("node_status")
    assert info.value.code == code and message in str(info.value)


def test_no_daemon():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        client = RpcClient(Config(server=ServerConfig(bind=f"127.0.0.1:{port}")), timeout=5)
        with pytest.raises(
            DaemonNotRunning, match=f"^no Gate daemon answers at http://127.0.0.1:{port}$"
        ):
            client.call("node_status")
        with pytest.raises(DaemonNotRunning, match=r"^no Gate daemon answers"):
            next(client.events())
        assert client.alive() is False


@pytest.mark.parametrize("cut", [False, True], ids=["ended", "cut"])
def test_events_tell_a_stream_cut_short_from_one_ended(cut):
    with scripted() as server:
        server.cut = cut
        client = client_for(server, token="t")
        received = []
        with contextlib.ExitStack() as stack:
            if cut:
                stack.enter_context(pytest.raises(DaemonStopped, match="went away"))
            received.extend(client.events())
    assert received == [("hello", {}), ("log", {"msg": "x"})]
    assert server.seen[0][:2] == ("GET", "/rpc/events")
    assert server.seen[0][2]["authorization"] == "Bearer t"
