"""JSON-RPC 2.0 at POST /rpc against a real `gate serve` in front of the real engine."""

import json
import time
from types import SimpleNamespace

import httpx
import pytest

from gate.config import LOCAL_ENGINE_URLS
from gate.services.control.rpc import RpcService
from tests.engine.llama_server import free_port

from .conftest import engine_config
from .gate_process import GateServe
from .test_gateway import HI, MODEL

pytestmark = pytest.mark.e2e

OTHER_NODE = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"


def rpc(gate, method, params=None, *, ident=1, headers=None):
    body = {"jsonrpc": "2.0", "method": method, "id": ident}
    if params is not None:
        body["params"] = params
    response = httpx.post(f"{gate.url}/rpc", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def result(gate, method, params=None):
    answer = rpc(gate, method, params)
    assert "error" not in answer, answer
    return answer["result"]


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine) + "[security]\n")


def test_status_providers_config_metrics_and_history(gate):
    status = result(gate, "node_status")
    assert len(status["node_id"]) == 52 and status["providers"] == {"llama": True}
    assert status["services"]["http"]["state"] == "running"
    (provider,) = result(gate, "list_providers")
    assert provider["name"] == "llama" and provider["models"] == [MODEL]
    assert result(gate, "test_provider", {"name": "llama"})["healthy"] is True
    assert rpc(gate, "test_provider", {"name": "nope"})["error"]["code"] == -32004
    config = result(gate, "get_config")
    assert config["providers"]["engines"][0]["name"] == "llama"
    httpx.post(
        f"{gate.url}/v1/chat/completions",
        timeout=30,
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
    )
    assert "gate_requests_total{" in result(gate, "get_metrics")
    history = []
    deadline = time.monotonic() + 5
    while not history and time.monotonic() < deadline:  # written off the hot path
        history = result(gate, "request_history", {"limit": 10, "model": MODEL})
        time.sleep(0.1)
    assert history[0]["model"] == MODEL and history[0]["status"] == 200
    bad = rpc(gate, "request_history", {"limit": 0})
    assert bad["error"]["code"] == -32602


def test_validate_config(gate):
    assert result(gate, "validate_config") == {"valid": True, "error": None}
    good = result(gate, "validate_config", {"toml": "[server]\nbind = '127.0.0.1:9'\n"})
    assert good["valid"] is True
    bad = result(gate, "validate_config", {"toml": "[p2p]\nport = 70000\n"})
    assert bad["valid"] is False and "p2p.port" in bad["error"]


def test_peers_over_rpc(gate):
    assert result(gate, "list_peers") == []
    added = result(gate, "add_peer", {"peer": f"{OTHER_NODE}@127.0.0.1:9"})
    assert added == {"trusted": f"{OTHER_NODE}@127.0.0.1:9"}
    deadline = time.monotonic() + 10
    peers = []
    while not peers and time.monotonic() < deadline:  # the config watcher applies it
        peers = result(gate, "list_peers")
        time.sleep(0.2)
    assert peers[0]["node_id"] == OTHER_NODE
    assert result(gate, "peer_info", {"node_id": OTHER_NODE})["node_id"] == OTHER_NODE
    assert rpc(gate, "add_peer", {"peer": "garbage"})["error"]["code"] == -32602
    assert result(gate, "remove_peer", {"node_id": OTHER_NODE}) == {"removed": True}
    assert rpc(gate, "remove_peer", {"node_id": OTHER_NODE})["error"]["code"] == -32004


def test_api_keys_over_rpc(gate):
    created = result(gate, "create_api_key", {"name": "ci"})
    assert created["key"].startswith("gk_") and created["info"]["name"] == "ci"
    assert [k["name"] for k in result(gate, "list_api_keys")] == ["ci"]
    assert result(gate, "revoke_api_key", {"id": created["info"]["id"]}) == {"revoked": True}
    assert rpc(gate, "revoke_api_key", {"id": created["info"]["id"]})["error"]["code"] == -32004
    assert "hash" not in json.dumps(result(gate, "list_api_keys"))


def test_deeply_nested_calls_are_a_parse_error_not_a_crash(gate):
    url, json_type = f"{gate.url}/rpc", {"content-type": "application/json"}
    deep_document = b"[" * 100_000
    deep_params = (
        b'{"jsonrpc":"2.0","id":1,"method":"update_config","params":{"set":'
        b'{"providers.aliases":' + b"[" * 5000 + b"]" * 5000 + b"}}}"
    )
    for body in (deep_document, deep_params):
        response = httpx.post(url, content=body, headers=json_type, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["error"]["code"] == -32700
        assert "nested more than" in response.json()["error"]["message"]
    assert "node_id" in result(gate, "node_status")


def test_json_rpc_errors_batches_and_notifications(gate):
    url = f"{gate.url}/rpc"
    json_type = {"content-type": "application/json"}
    parse = httpx.post(url, content=b"{not json", headers=json_type, timeout=10).json()
    assert parse["error"]["code"] == -32700 and parse["id"] is None
    invalid = httpx.post(url, json={"method": "node_status", "id": 3}, timeout=10).json()
    assert invalid["error"]["code"] == -32600 and invalid["id"] == 3
    unknown = rpc(gate, "no_such_method")
    assert unknown["error"]["code"] == -32601 and "node_status" in unknown["error"]["message"]
    extra = rpc(gate, "node_status", {"verbose": True})
    assert extra["error"]["code"] == -32602 and "verbose" in extra["error"]["message"]
    wrong_type = rpc(gate, "request_history", {"limit": "ten"})
    assert wrong_type["error"]["code"] == -32602
    batch = httpx.post(
        url,
        timeout=10,
        json=[
            {"jsonrpc": "2.0", "method": "node_status", "id": "a"},
            {"jsonrpc": "2.0", "method": "list_peers"},  # a notification: no answer
            {"jsonrpc": "2.0", "method": "nope", "id": "c"},
        ],
    ).json()
    assert [answer["id"] for answer in batch] == ["a", "c"]
    assert "result" in batch[0] and batch[1]["error"]["code"] == -32601
    only_notification = httpx.post(url, timeout=10, json={"jsonrpc": "2.0", "method": "list_peers"})
    assert only_notification.status_code == 204
    assert httpx.post(url, json=[], timeout=10).json()["error"]["code"] == -32600


def test_control_token_is_required_when_set(start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine) + "[security]\ncontrol_token = 's3cret'\n")
    body = {"jsonrpc": "2.0", "method": "node_status", "id": 1}
    assert httpx.post(f"{gate.url}/rpc", json=body, timeout=10).status_code == 401
    wrong = httpx.post(
        f"{gate.url}/rpc", json=body, timeout=10, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    right = httpx.post(
        f"{gate.url}/rpc", json=body, timeout=10, headers={"authorization": "Bearer s3cret"}
    )
    assert right.status_code == 200 and "result" in right.json()
    also = httpx.post(
        f"{gate.url}/rpc", json=body, timeout=10, headers={"x-gate-control-token": "s3cret"}
    )
    assert also.status_code == 200


def test_node_shutdown_stops_the_daemon(gate):
    assert result(gate, "node_shutdown") == {"stopping": True}
    assert gate.wait(timeout=20) == 0


def door(token=""):
    node = SimpleNamespace(config=SimpleNamespace(security=SimpleNamespace(control_token=token)))
    return RpcService(node)  # type: ignore[arg-type]


def scope(client="127.0.0.1", host=b"127.0.0.1:31145", method="GET", headers=(), query=b""):
    return {
        "client": (client, 5) if client else None,
        "server": ("127.0.0.1", 31145),
        "method": method,
        "query_string": query,
        "headers": ([(b"host", host)] if host else []) + list(headers),
    }


def test_only_loopback_callers_are_answered():
    assert door()._refusal(scope()) is None
    assert door()._refusal(scope(client="::1")) is None
    assert door()._refusal(scope(client="192.0.2.7"))[0] == 401
    assert door()._refusal(scope(client=None))[0] == 401


# The door's rules against web pages (rpc.py, RpcService._refusal), case by case:
# (Host, Origin, Content-Type of a POST) -> the HTTP status of the refusal, or None.
DOOR_CASES = [
    (b"127.0.0.1:31145", None, None, None),
    (b"localhost:31145", None, None, None),
    (b"LOCALHOST:31145", None, None, None),
    (b"[::1]:31145", None, None, None),
    (b"127.0.0.1:31145", b"http://127.0.0.1:31145", None, None),
    (b"127.0.0.1:31145", b"http://localhost:31145", None, None),
    (b"localhost:31145", b"http://[::1]:31145", b"application/json; charset=utf-8", None),
    (None, None, None, 403),  # no Host at all
    (b"evil.example:31145", None, None, 403),  # DNS rebinding: the page's own name
    (b"127.0.0.1", None, None, 403),  # not this port
    (b"127.0.0.1:8080", None, None, 403),
    (b"localhost.:31145", None, None, 403),
    (b"127.0.0.2:31145", None, None, 403),
    (b"127.0.0.1:31145", b"http://evil.example", None, 403),  # another site
    (b"127.0.0.1:31145", b"http://127.0.0.1:8080", None, 403),  # another local service
    (b"127.0.0.1:31145", b"https://127.0.0.1:31145", None, 403),
    (b"127.0.0.1:31145", b"null", None, 403),  # sandboxed frames, file:// pages
    (b"127.0.0.1:31145", None, b"", 415),  # POST without a type
    (b"127.0.0.1:31145", None, b"text/plain", 415),  # a "simple" cross-site request
    (b"127.0.0.1:31145", None, b"application/x-www-form-urlencoded", 415),
    (b"127.0.0.1:31145", b"http://evil.example", b"text/plain", 403),
]


@pytest.mark.parametrize(("host", "origin", "content_type", "status"), DOOR_CASES)
def test_the_door_refuses_other_hosts_origins_and_content_types(host, origin, content_type, status):
    headers = [(b"origin", origin)] if origin is not None else []
    method = "GET"
    if content_type is not None:
        method = "POST"
        headers += [(b"content-type", content_type)] if content_type else []
    refusal = door()._refusal(scope(host=host, method=method, headers=headers))
    assert (refusal and refusal[0]) == status, refusal


def test_the_token_may_come_in_the_query_on_the_events_stream_only():
    locked = door("s3cret")
    assert locked._refusal(scope())[0] == 401
    bearer = [(b"authorization", b"Bearer s3cret")]
    assert locked._refusal(scope(headers=bearer)) is None
    assert locked._refusal(scope(query=b"token=s3cret"), token_in_query=True) is None
    assert locked._refusal(scope(query=b"token=s3cret"))[0] == 401  # POST /rpc: headers only
    assert locked._refusal(scope(query=b"token=nope"), token_in_query=True)[0] == 401
    assert locked._refusal(scope(query=b"token="), token_in_query=True)[0] == 401
    # The token does not open the door to another site's page.
    foreign = [*bearer, (b"origin", b"http://evil.example")]
    assert locked._refusal(scope(headers=foreign))[0] == 403


def test_other_hosts_and_origins_are_refused_and_logged(gate):
    body = {"jsonrpc": "2.0", "method": "node_status", "id": 1}
    url = f"{gate.url}/rpc"
    rebound = httpx.post(url, json=body, headers={"host": "evil.example"}, timeout=10)
    assert rebound.status_code == 403 and "Host" in rebound.json()["error"]["message"]
    cross = httpx.post(url, json=body, headers={"origin": "http://evil.example"}, timeout=10)
    assert cross.status_code == 403 and "origin" in cross.json()["error"]["message"]
    simple = httpx.post(
        url, content=b'{"jsonrpc": "2.0", "method": "node_shutdown", "id": 1}', timeout=10
    )
    assert simple.status_code == 415
    events = httpx.get(f"{gate.url}/rpc/events", headers={"host": "evil.example"}, timeout=10)
    assert events.status_code == 403
    events = httpx.get(
        f"{gate.url}/rpc/events", headers={"origin": "http://evil.example"}, timeout=10
    )
    assert events.status_code == 403
    own = httpx.post(url, json=body, headers={"origin": gate.url}, timeout=10)
    assert own.status_code == 200 and own.json()["result"]["node_id"]
    assert gate.proc.poll() is None  # the refused node_shutdown did nothing
    logged = [r for r in result(gate, "get_logs", {"level": "warning"}) if "refused" in r["msg"]]
    assert len(logged) >= 5 and {r["reason"] for r in logged} >= {
        "requests from other origins are refused",
        "Content-Type must be application/json",
    }


def test_the_events_stream_takes_the_token_in_its_query(start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine) + "[security]\ncontrol_token = 's3cret'\n")
    events = f"{gate.url}/rpc/events"
    assert httpx.get(events, params={"token": "nope"}, timeout=10).status_code == 401
    with httpx.stream("GET", events, params={"token": "s3cret"}, timeout=10) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()) == "event: hello"
    body = {"jsonrpc": "2.0", "method": "node_status", "id": 1}
    query_only = httpx.post(f"{gate.url}/rpc", params={"token": "s3cret"}, json=body, timeout=10)
    assert query_only.status_code == 401


def test_live_events_stream_requests_and_logs_and_ends_at_shutdown(gate):
    import signal
    import threading

    seen: list[tuple[str, dict]] = []
    done = threading.Event()

    def ask_once_subscribed():
        done.wait(10)
        httpx.post(
            f"{gate.url}/v1/chat/completions",
            timeout=30,
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
        )

    worker = threading.Thread(target=ask_once_subscribed)
    worker.start()
    kind = None
    with httpx.stream("GET", f"{gate.url}/rpc/events", timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == "hello":
                    done.set()
                if kind == "request.end":
                    break
    worker.join()
    kinds = [k for k, _ in seen]
    assert kinds[0] == "hello" and seen[0][1]["node_id"]
    start = next(d for k, d in seen if k == "request.start")
    end = next(d for k, d in seen if k == "request.end")
    assert start["model"] == MODEL and end["id"] == start["id"]
    assert end["status"] == 200 and end["provider"] == "llama" and end["latency_ms"] > 0
    # The stream ends when the node stops: shutdown does not wait for it.
    with httpx.stream("GET", f"{gate.url}/rpc/events", timeout=30) as response:
        lines = response.iter_lines()
        next(lines)  # hello
        started = time.monotonic()
        gate.signal(signal.SIGTERM)
        rest = list(lines)
    assert any("stopping" in line for line in rest)
    assert gate.wait(timeout=20) == 0 and time.monotonic() - started < 5


# The CLI's own tests (every command, through this RPC) are in test_cli.py.


def test_update_config_and_add_provider(gate, llama_engine):
    updated = result(
        gate,
        "update_config",
        {"set": {"server.log_level": "debug", "p2p.trusted_peers": [], "p2p.port": 41999}},
    )
    assert updated["restart_required"] == ["p2p.port"]
    assert updated["config"]["server"]["log_level"] == "debug"
    bad = rpc(gate, "update_config", {"set": {"p2p.port": 70000}})
    assert bad["error"]["code"] == -32602 and "p2p.port" in bad["error"]["message"]
    flat = rpc(gate, "update_config", {"set": {"bind": "x"}})
    assert flat["error"]["code"] == -32602
    added = result(
        gate,
        "add_provider",
        {"name": "again", "kind": "llamacpp", "base_url": llama_engine.root_url},
    )
    assert added["healthy"] is True and added["models"] == [MODEL]
    names = [p["name"] for p in result(gate, "list_providers")]
    assert names == ["llama", "again"]
    duplicate = rpc(gate, "add_provider", {"name": "again", "kind": "llamacpp"})
    assert duplicate["error"]["code"] == -32602


def test_identity_methods(gate):
    from gate.identity import NodeIdentity
    from gate.protocol import NodeId

    fresh = result(gate, "generate_keypair")
    identity = NodeIdentity.from_pem(fresh["pem"].encode(), None)
    assert str(NodeId(identity.public_key_bytes)) == fresh["node_id"]
    mine = result(gate, "export_identity")
    assert mine["node_id"] == result(gate, "node_status")["node_id"]
    locked = result(gate, "export_identity", {"passphrase": "pw"})
    assert "ENCRYPTED" in locked["pem"]
    refused = rpc(gate, "import_identity", {"pem": fresh["pem"]})
    assert refused["error"]["code"] == -32602 and "--force" in refused["error"]["message"]
    installed = result(gate, "import_identity", {"pem": fresh["pem"], "force": True})
    assert installed == {"node_id": fresh["node_id"], "restart_required": True}


def test_node_restart_comes_back_as_the_same_process(gate):
    import re
    import select

    pid = gate.proc.pid
    node_id = result(gate, "node_status")["node_id"]
    assert result(gate, "node_restart") == {"restarting": True}
    deadline = time.monotonic() + 30
    url, buffer = None, b""
    while url is None and time.monotonic() < deadline:
        if select.select([gate.proc.stdout], [], [], 0.5)[0]:
            buffer += gate.proc.stdout.read() or b""
            match = re.search(rb"listening on (http://\S+)", buffer)
            url = match.group(1).decode() if match else None
    assert url is not None and url != gate.url
    assert gate.proc.pid == pid and gate.proc.poll() is None
    assert httpx.get(f"{url}/health", timeout=10).json()["node_id"] == node_id


def test_get_logs(gate):
    records = result(gate, "get_logs", {"level": "info", "limit": 500})
    assert any(r["msg"] == "database open" for r in records)
    assert all(r["level"] in ("info", "warning", "error", "critical") for r in records)
    assert len(result(gate, "get_logs", {"limit": 1})) == 1
    assert rpc(gate, "get_logs", {"level": "loud"})["error"]["code"] == -32602


def test_discover_providers_finds_the_engine_at_a_given_address(gate_env, llama_engine):
    # Each local kind is looked for where providers.probe_urls says: here, ports this
    # test took (free a moment ago), where nothing answers.
    probe_urls = {kind: f"http://127.0.0.1:{free_port()}" for kind in LOCAL_ENGINE_URLS}
    env = {**gate_env, "GATE_PROVIDERS__PROBE_URLS": json.dumps(probe_urls)}
    with GateServe(env, config=engine_config(llama_engine) + "[security]\n") as gate:
        found = result(gate, "discover_providers", {"urls": [llama_engine.root_url]})
        bad = rpc(gate, "discover_providers", {"urls": ["localhost:1"]})
    probed = {p["kind"]: p["base_url"] for p in found if p["kind"] in LOCAL_ENGINE_URLS}
    assert probed == probe_urls  # each probe address
    assert not any(p["found"] for p in found if p["kind"] in LOCAL_ENGINE_URLS)
    (engine,) = [p for p in found if p["base_url"] == llama_engine.root_url]
    assert engine["found"] and engine["models"] == [MODEL] and engine["configured"]
    assert engine["kind"] == "openai_compatible"  # it does not answer Ollama's /api/tags
    assert bad["error"]["code"] == -32602 and "http://" in bad["error"]["message"]
