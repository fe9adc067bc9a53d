"""`tls.listen`: the relay door's TLS on a TCP port of the node, no relay in between (what
an SNI router of your own, such as nginx's ssl_preread, forwards to; bench/relay.py
compares the two ways in). A real `gate serve` with a certificate from a test CA and the
real llama.cpp engine behind it; the usage log names the door `tls`."""

from __future__ import annotations

import json
import ssl

import httpx
import msgspec
import pytest

from gate.config import Config
from gate.errors import ConfigError
from tests.local_ca import LocalCA

from .conftest import engine_config
from .gate_process import GateServe, free_port, run_gate, wait_for
from .test_gateway import HI, MODEL, NO_EOS
from .test_relay import NOWHERE, RelayedHTTPS

pytestmark = pytest.mark.e2e


def test_the_relay_door_on_a_tcp_port(tmp_path, gate_env, llama_engine):
    node_id = json.loads(run_gate("identity", "show", "--json", env=gate_env).stdout)["node_id"]
    created = run_gate(
        "keys", "create", "tls", "--json", env={**gate_env, "GATE_SERVER__BIND": NOWHERE}
    )
    key = json.loads(created.stdout)["key"]
    hostname = f"{node_id}.relay.test"
    ca = LocalCA()
    cert_file, key_file = ca.issue(hostname, tmp_path / "tls")
    port = free_port()
    config = engine_config(llama_engine) + (
        f"[tls]\ncert_file = {json.dumps(str(cert_file))}\n"
        f"key_file = {json.dumps(str(key_file))}\nlisten = '127.0.0.1:{port}'\n"
    )
    context = ssl.create_default_context(cadata=ca.pem())

    def get(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = RelayedHTTPS(hostname, ("127.0.0.1", port), context)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    with GateServe(gate_env, config=config) as node:
        auth = {"Authorization": f"Bearer {key}"}
        wait_for(lambda: MODEL in get("/v1/models", auth)[1].decode(), "the engine's model")
        # The relay door's rules: an API key always, no control plane, no web UI.
        assert get("/v1/models", {})[0] == 401
        for path in ("/rpc/events", "/", "/metrics"):
            assert get(path, auth)[0] == 404, path
        assert get("/health", auth) == (200, b'{"status":"ok"}')

        # The usage log records this door as its own, `tls`: no relay was in between.
        conn = RelayedHTTPS(hostname, ("127.0.0.1", port), context)
        request = {"model": MODEL, "messages": HI, "max_tokens": 2, "logit_bias": NO_EOS}
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(request),
            headers={**auth, "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
        conn.close()

        def history(**params):
            call = {"jsonrpc": "2.0", "id": 1, "method": "request_history", "params": params}
            return httpx.post(f"{node.url}/rpc", json=call, timeout=30).json()["result"]

        rows = wait_for(lambda: history(limit=10) or None, "the usage row")
        assert [(r["door"], r["endpoint"], r["status"]) for r in rows] == [
            ("tls", "chat.completions", 200)
        ]
        assert history(door="relay") == []


def test_listen_needs_certificate_files():
    with pytest.raises((ConfigError, ValueError), match="listen needs cert_file"):
        msgspec.convert({"tls": {"listen": "127.0.0.1:8443"}}, Config)
