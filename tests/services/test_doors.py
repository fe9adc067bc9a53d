"""One router per door: the local door serves everything, the peer door (what a trusted
peer's HttpProxy stream reaches) only the API routes declared for peers."""

import json
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from gate.config import ProviderConfig, ProvidersConfig, SecurityConfig, ServerConfig
from gate.services.control.rpc import RpcService
from gate.services.control.web_ui import mount_web_ui
from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import ProviderRegistry
from gate.services.gateway.metrics import Metrics
from gate.services.gateway.pipeline import Gateway
from gate.services.http.router import EVERY_DOOR, Door, Route, Router, send_json
from gate.services.http.server import build_app
from gate.services.p2p.http_over_stream import request_over_stream
from gate.services.store.usage import UsageRecorder

from .test_peer_proxy import responder

NODE_ID = "n" * 52
NOT_FOUND = {"error": {"message": "not found", "type": "not_found"}}
RPC_CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_status"}).encode()
# Every path of the control plane and the web UI, and /metrics: none is on the peer door.
LOCAL_ONLY_PATHS = [
    ("POST", "/rpc", RPC_CALL),
    ("GET", "/rpc/events", b""),
    ("GET", "/", b""),
    ("HEAD", "/", b""),
    ("GET", "/ui", b""),
    ("GET", "/ui/", b""),
    ("GET", "/ui/app.js", b""),
    ("GET", "/metrics", b""),
]


@pytest.fixture
def gateway():
    engine = ProviderConfig(
        name="llama", kind="llamacpp", base_url="http://127.0.0.1:9", models=["m"]
    )
    client = UpstreamClient()
    registry = ProviderRegistry(ProvidersConfig(engines=[engine], probe_local=False), client)
    registry.providers[0].healthy = True
    return Gateway(
        registry=registry,
        client=client,
        metrics=Metrics(),
        usage=UsageRecorder(),
        api_keys=None,
        server=ServerConfig(),
        security=SecurityConfig(),
    )


def doors(gateway):
    """The two routers, assembled as gate.node assembles them."""
    local = build_app(node_id=NODE_ID)
    gateway.install(local)
    rpc = RpcService(SimpleNamespace())  # never called through: the node is not needed
    local.add("POST", "/rpc", rpc)
    local.add("GET", "/rpc/events", rpc.events)
    mount_web_ui(local)
    peer = build_app(node_id=NODE_ID, door=Door.PEER)
    gateway.install(peer, door=Door.PEER)
    return local, peer


async def over_the_hop(app, method, target, body=b""):
    """One request to `app` as a trusted peer sends it: over an HttpProxy stream."""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, app)
        with trio.fail_after(5):
            response = await request_over_stream(
                a,
                method=method,
                target=target,
                headers=[(b"content-type", b"application/json")] if body else [],
                body=body,
                peer="peer-b",
                response_timeout=5,
                read_timeout=5,
            )
            async with response:
                streaming = response.header(b"content-type") == b"text/event-stream"
                answer = b"" if streaming else await response.read()
        nursery.cancel_scope.cancel()
    return response.status, answer


def test_the_routes_a_peer_may_use_are_the_api(gateway):
    peer_routes = {(r.method, r.path) for r in gateway.routes() if Door.PEER in r.doors}
    assert peer_routes == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/"),  # a prefix: /v1/models/{id}
    }
    local_routes = {(r.method, r.path) for r in gateway.routes() if Door.LOCAL in r.doors}
    assert local_routes == peer_routes | {("GET", "/metrics")}


@pytest.mark.parametrize(("method", "target", "body"), LOCAL_ONLY_PATHS)
async def test_the_peer_door_has_no_control_plane_ui_or_metrics(gateway, method, target, body):
    local, peer = doors(gateway)
    status, answer = await over_the_hop(peer, method, target, body)
    assert status == 404
    # The 404 of a path that does not exist: nothing hints that it does elsewhere.
    if method != "HEAD":
        assert json.loads(answer) == NOT_FOUND
    assert await over_the_hop(peer, "GET", "/no-such-path") == (404, answer)
    # The local door still has it (the RPC refuses a peer's scope on its own, as before).
    assert (await over_the_hop(local, method, target, body))[0] != 404


async def test_the_peer_door_serves_the_api_and_a_bare_health(gateway):
    local, peer = doors(gateway)
    status, models = await over_the_hop(peer, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(models)["data"]] == ["m"]
    status, model = await over_the_hop(peer, "GET", "/v1/models/m")
    assert status == 200 and json.loads(model)["id"] == "m"
    # The endpoints reach the pipeline: an unknown model is its answer, not the router's.
    status, answer = await over_the_hop(
        peer, "POST", "/v1/chat/completions", b'{"model": "nope", "messages": []}'
    )
    assert status == 404 and json.loads(answer)["error"]["code"] == "model_not_found"
    # Alive, and nothing of the node's engines or peers; the local door tells its callers.
    assert await over_the_hop(peer, "GET", "/health") == (200, b'{"status":"ok"}')
    _, health = await over_the_hop(local, "GET", "/health")
    assert json.loads(health)["node_id"] == NODE_ID


async def test_add_routes_adds_only_the_routes_served_at_that_door():
    async def hello(scope, receive, send):
        await send_json(send, 200, {"door": "any"})

    routes = [
        Route("GET", "/both", hello, EVERY_DOOR),
        Route("GET", "/local", hello, frozenset({Door.LOCAL})),
        Route("GET", "/peer/", hello, frozenset({Door.PEER}), prefix=True),
    ]
    local, peer = Router(), Router()
    local.add_routes(routes, Door.LOCAL)
    peer.add_routes(routes, Door.PEER)
    answers = {
        (name, path): (await over_the_hop(router, "GET", path))[0]
        for name, router in (("local", local), ("peer", peer))
        for path in ("/both", "/local", "/peer/x")
    }
    assert answers == {
        ("local", "/both"): 200,
        ("local", "/local"): 200,
        ("local", "/peer/x"): 404,
        ("peer", "/both"): 200,
        ("peer", "/local"): 404,
        ("peer", "/peer/x"): 200,
    }
