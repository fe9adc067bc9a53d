"""The control plane's door: JSON-RPC 2.0 at POST /rpc.

Requests and batches per the JSON-RPC 2.0 spec; parameters are decoded strictly into
msgspec structs (an unknown or mistyped parameter is -32602 with the reason), results
are plain JSON. Callers must be on this machine (loopback) and, when
`security.control_token` is set, present it (`Authorization: Bearer <token>` or
`X-Gate-Control-Token`; GET /rpc/events also takes `?token=`, as a browser's
EventSource cannot send headers); anything else gets HTTP 401. Because the web UI
talks to /rpc from a browser, a web page from elsewhere must not be able to use that
browser to drive it: see `_refusal` for the Host, Origin and Content-Type rules
(HTTP 403/415). Every refusal is logged.

Methods act on the running node through `ControlledNode` (node_api), never through its
services: its status, peers, providers, configuration (edits of gate.toml, which run
before the answer: `ControlledNode.edit_config`), metrics, request history and API keys.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec
import trio

from gate import __version__
from gate.config import (
    Config,
    config_to_dict,
    validate_config_file,
    validate_config_text,
)
from gate.dialects import encode_event
from gate.errors import ConfigError, IdentityError
from gate.identity import NodeIdentity
from gate.json_depth import MAX_JSON_DEPTH, nests_deeper_than
from gate.logs import LEVELS, read_log
from gate.peers_config import DistrustEdit, trust_edit
from gate.protocol import NodeId
from gate.reload import LIVE_KEYS
from gate.services.control.events import Event
from gate.services.control.node_api import ControlledNode, NotStarted
from gate.services.http.router import (
    BodyError,
    Receive,
    Scope,
    Send,
    cancel_on_disconnect,
    read_body,
    send_json,
)

__all__ = ["RpcError", "RpcService"]

log = logging.getLogger("gate.rpc")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
NOT_FOUND: Final = -32004  # the thing named does not exist
UNAVAILABLE: Final = -32005  # the node cannot do that now
MAX_BODY: Final = 1024 * 1024


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Request(msgspec.Struct):
    jsonrpc: str
    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: int | str | None = None


# --- parameters ------------------------------------------------------------------


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NoParams(_Strict):
    pass


class PeerParams(_Strict):
    peer: str


class NodeIdParams(_Strict):
    node_id: str


class ProviderParams(_Strict):
    name: str


class ValidateConfigParams(_Strict):
    toml: str | None = None  # text to check; default: the node's config file


class HistoryParams(_Strict):
    limit: int = 100
    offset: int = 0
    model: str | None = None
    client: str | None = None
    since: float | None = None
    door: str | None = None  # local, peer, relay or tls


class LogsParams(_Strict):
    level: str = "info"
    limit: int = 100


class KeyNameParams(_Strict):
    name: str


class KeyIdParams(_Strict):
    id: str


class UpdateConfigParams(_Strict):
    # Dotted keys to values, e.g. {"p2p.heartbeat_interval": 5, "server.log_level": "debug"}.
    set: dict[str, Any]


class AddProviderParams(_Strict):
    name: str
    kind: str
    base_url: str = ""
    api_key_env: str = ""
    models: list[str] = []
    max_concurrency: int = 0


class DiscoverParams(_Strict):
    urls: list[str] = []  # addresses to try besides each local kind's default


class ExportIdentityParams(_Strict):
    passphrase: str | None = None  # encrypt the exported key with it


class ImportIdentityParams(_Strict):
    pem: str
    source_passphrase: str | None = None
    force: bool = False


@dataclass(frozen=True)
class _Method:
    params: type[_Strict]
    handler: Callable[[Any], Awaitable[Any]]


class RpcService:
    def __init__(self, node: ControlledNode) -> None:
        self.node = node
        self.started = time.monotonic()
        self.methods: dict[str, _Method] = {
            "node_status": _Method(NoParams, self.node_status),
            "node_shutdown": _Method(NoParams, self.node_shutdown),
            "list_peers": _Method(NoParams, self.list_peers),
            "peer_info": _Method(NodeIdParams, self.peer_info),
            "add_peer": _Method(PeerParams, self.add_peer),
            "remove_peer": _Method(NodeIdParams, self.remove_peer),
            "list_providers": _Method(NoParams, self.list_providers),
            "test_provider": _Method(ProviderParams, self.test_provider),
            "discover_providers": _Method(DiscoverParams, self.discover_providers),
            "get_config": _Method(NoParams, self.get_config),
            "validate_config": _Method(ValidateConfigParams, self.validate_config),
            "get_metrics": _Method(NoParams, self.get_metrics),
            "request_history": _Method(HistoryParams, self.request_history),
            "get_logs": _Method(LogsParams, self.get_logs),
            "create_api_key": _Method(KeyNameParams, self.create_api_key),
            "list_api_keys": _Method(NoParams, self.list_api_keys),
            "revoke_api_key": _Method(KeyIdParams, self.revoke_api_key),
            "update_config": _Method(UpdateConfigParams, self.update_config),
            "add_provider": _Method(AddProviderParams, self.add_provider),
            "generate_keypair": _Method(NoParams, self.generate_keypair),
            "export_identity": _Method(ExportIdentityParams, self.export_identity),
            "import_identity": _Method(ImportIdentityParams, self.import_identity),
            "node_restart": _Method(NoParams, self.node_restart),
        }

    # --- live events: GET /rpc/events (SSE) -------------------------------------

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-sent events: `hello` (the node status), then every event as it happens;
        a comment every 15 s keeps proxies from closing an idle stream. Ends when the
        client leaves or the node stops."""
        refusal = self._refusal(scope, token_in_query=True)
        if refusal is not None:
            status, reason = refusal
            log.warning(
                "refused an events stream",
                extra={"client": str(scope.get("client")), "reason": reason},
            )
            await send_json(send, status, {"error": reason})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            async with self.node.events.subscribe() as stream:
                # Subscribed before `hello`: a client that reads history once it has
                # `hello` (`gate logs -f`) misses nothing logged in between.
                hello = await self.node_status(NoParams())
                body = _sse("hello", hello)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                stream_iter = aiter(stream)
                while True:
                    event: Event | None = None
                    with trio.move_on_after(15):
                        event = await anext(stream_iter, None)
                        if event is None:  # the bus closed: the node is stopping
                            break
                    body = b": keep-alive\n\n" if event is None else _sse(event.kind, event.data)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            nursery.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- the door --------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope)
        if refusal is not None:
            status, reason = refusal
            log.warning(
                "refused an RPC call", extra={"client": str(scope.get("client")), "reason": reason}
            )
            await send_json(
                send,
                status,
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": INVALID_REQUEST, "message": reason},
                },
            )
            return
        try:
            timeout = self.node.config.server.body_timeout
            body = await read_body(scope, receive, limit=MAX_BODY, timeout=timeout)
        except BodyError as exc:
            await send_json(send, exc.status, _error(None, INVALID_REQUEST, exc.message))
            return
        too_deep = f"nested more than {MAX_JSON_DEPTH} deep"
        problem: str | None = None
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            problem = str(exc)
        except RecursionError:  # the decoder's own guard, far past the bound
            problem = too_deep
        else:
            problem = too_deep if nests_deeper_than(document) else None
        if problem is not None:
            await send_json(send, 200, _error(None, PARSE_ERROR, f"parse error: {problem}"))
            return
        if isinstance(document, list):
            if not document:
                await send_json(send, 200, _error(None, INVALID_REQUEST, "empty batch"))
                return
            answers = [a for a in [await self._one(item) for item in document] if a is not None]
            if answers:
                await send_json(send, 200, answers)
            else:
                await _no_content(send)
            return
        answer = await self._one(document)
        if answer is None:
            await _no_content(send)
        else:
            await send_json(send, 200, answer)

    def _refusal(self, scope: Scope, *, token_in_query: bool = False) -> tuple[int, str] | None:
        """Why this request may not use the control plane, as (HTTP status, reason).

        The caller must be a program on this machine (loopback). A browser on this
        machine is one, and runs pages from anywhere, so three more rules keep another
        site's page from driving Gate through it:
        - Host must be a loopback name with the port the request came in on. A page whose
          DNS name was rebound to 127.0.0.1 is same-origin with itself, not with Gate, and
          its browser still sends its own name (DNS rebinding).
        - An Origin header (browsers send one on cross-origin requests and on every POST)
          must be this node's own origin; a cross-site fetch or form is refused.
        - POST /rpc must say Content-Type: application/json. No cross-site form can, and
          a cross-site fetch that does needs a CORS preflight, which Gate never answers.
        The CLI (http.client) sends a correct Host and no Origin. Then the control token, when
        set: a header, or on GET /rpc/events (`token_in_query`) `?token=` as well.
        """
        client, server = scope.get("client"), scope.get("server")
        try:
            loopback = client is not None and ipaddress.ip_address(client[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return 401, "the control API answers this machine only"
        headers = scope["headers"]
        port = server[1] if server else None
        host = next((value for name, value in headers if name == b"host"), None)
        if port is None or host is None or host.lower() not in _own_hosts(port):
            return 403, "the Host header must be 127.0.0.1, localhost or [::1] with this port"
        for name, value in headers:
            if name == b"origin" and value.lower() not in _own_origins(port):
                return 403, "requests from other origins are refused"
        if scope.get("method") == "POST":
            kind = next((value for name, value in headers if name == b"content-type"), b"")
            if kind.split(b";")[0].strip().lower() != b"application/json":
                return 415, "Content-Type must be application/json"
        token = self.node.config.security.control_token
        if not token:
            return None
        presented = None
        for name, value in headers:
            if name == b"x-gate-control-token":
                presented = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if presented is None and token_in_query:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            presented = query["token"][0].encode() if "token" in query else None
        if presented is None or not hmac.compare_digest(presented, token.encode()):
            return 401, "missing or wrong control token"
        return None

    async def _one(self, item: Any) -> dict[str, Any] | None:
        try:
            request = msgspec.convert(item, _Request)
        except msgspec.ValidationError as exc:
            ident = item.get("id") if isinstance(item, dict) else None
            return _error(ident, INVALID_REQUEST, f"invalid request: {exc}")
        if request.jsonrpc != "2.0":
            return _error(request.id, INVALID_REQUEST, 'jsonrpc must be "2.0"')
        notification = isinstance(item, dict) and "id" not in item
        method = self.methods.get(request.method)
        try:
            if method is None:
                raise RpcError(
                    METHOD_NOT_FOUND,
                    f"no method {request.method!r}; methods: " + ", ".join(sorted(self.methods)),
                )
            if isinstance(request.params, list):
                raise RpcError(INVALID_PARAMS, "params must be named (an object), not a list")
            try:
                params = msgspec.convert(request.params or {}, method.params)
            except msgspec.ValidationError as exc:
                raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None
            result = await method.handler(params)
        except RpcError as exc:
            return None if notification else _error(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("RPC method failed", extra={"method": request.method})
            return None if notification else _error(request.id, INTERNAL_ERROR, str(exc))
        if notification:
            return None
        return {"jsonrpc": "2.0", "id": request.id, "result": msgspec.to_builtins(result)}

    # --- methods ---------------------------------------------------------------

    async def node_status(self, _: NoParams) -> dict[str, Any]:
        status = self.node.status()
        return {
            "node_id": status.node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "p2p_address": status.p2p_address,
            "in_flight": status.in_flight,
            "providers": status.providers,
            "peers": status.peers,
            "services": {
                name: dataclasses.asdict(stats) for name, stats in status.services.items()
            },
            "relays": status.relays,
        }

    async def node_shutdown(self, _: NoParams) -> dict[str, bool]:
        self.node.request_shutdown("requested over RPC")
        return {"stopping": True}

    async def list_peers(self, _: NoParams) -> list[Any]:
        return list(self.node.peers())

    async def peer_info(self, params: NodeIdParams) -> Any:
        peer = self.node.peer(_node_id(params.node_id))
        if peer is None:
            raise RpcError(NOT_FOUND, f"{params.node_id} is not a trusted peer")
        return peer

    async def add_peer(self, params: PeerParams) -> dict[str, str]:
        """Trust a peer: in gate.toml and in the running node before the answer."""
        try:
            entry, edit = trust_edit(params.peer, own=self.node.node_id)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

        def check(config: Config) -> None:
            if entry not in config.p2p.trusted_peers:
                raise _overridden("p2p.trusted_peers")

        await self._edit_config(edit, check)
        return {"trusted": entry}

    async def remove_peer(self, params: NodeIdParams) -> dict[str, bool]:
        """Stop trusting a node: in gate.toml and in the running node before the answer."""
        try:
            edit = DistrustEdit(params.node_id)
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

        def check(config: Config) -> None:
            if not edit.removed:  # nothing to write
                raise RpcError(NOT_FOUND, f"{params.node_id} is not a trusted peer")
            if edit.still_trusted(config.p2p.trusted_peers):
                raise _overridden("p2p.trusted_peers")

        await self._edit_config(edit, check)
        return {"removed": True}

    async def list_providers(self, _: NoParams) -> list[dict[str, Any]]:
        return self.node.providers()

    async def test_provider(self, params: ProviderParams) -> dict[str, Any]:
        described = await self.node.test_provider(params.name)
        if described is None:
            raise RpcError(NOT_FOUND, f"no provider {params.name!r}")
        return described

    async def discover_providers(self, params: DiscoverParams) -> list[dict[str, Any]]:
        """Engines answering on this machine (each local kind at its providers.probe_urls
        address, and `urls`), whether each answered, its models, and whether gate.toml
        has it."""
        for url in params.urls:
            if not url.startswith(("http://", "https://")):
                raise RpcError(INVALID_PARAMS, f"{url!r}: give an http:// or https:// URL")
        found = await self.node.discover_providers(params.urls)
        return [dataclasses.asdict(engine) for engine in found]

    async def get_config(self, _: NoParams) -> dict[str, Any]:
        return config_to_dict(self.node.config, mask_secrets=True)

    async def validate_config(self, params: ValidateConfigParams) -> dict[str, Any]:
        """The node's config file, or the given TOML text, checked as `gate serve` would."""
        return await trio.to_thread.run_sync(_validate, self.node.config_file, params.toml)

    async def get_metrics(self, _: NoParams) -> str:
        return self.node.metrics_text()

    async def request_history(self, params: HistoryParams) -> list[Any]:
        try:
            return await self.node.usage_history(
                limit=params.limit,
                offset=params.offset,
                model=params.model,
                client=params.client,
                since=params.since,
                door=params.door,
            )
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None

    async def get_logs(self, params: LogsParams) -> list[dict[str, Any]]:
        """The last log records at `level` or above (live ones: GET /rpc/events)."""
        if params.level not in LEVELS or not 1 <= params.limit <= 10_000:
            raise RpcError(
                INVALID_PARAMS, f"level is one of {', '.join(LEVELS)}; limit is 1 to 10000"
            )
        path = self.node.log_file
        try:
            return await trio.to_thread.run_sync(
                partial(read_log, path, level=params.level, limit=params.limit)
            )
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"cannot read {path}: {exc}") from None

    async def create_api_key(self, params: KeyNameParams) -> dict[str, Any]:
        try:
            key, info = await self.node.create_api_key(params.name)
        except NotStarted as exc:
            raise RpcError(UNAVAILABLE, str(exc)) from None
        except ValueError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        return {"key": key, "info": info}

    async def list_api_keys(self, _: NoParams) -> list[Any]:
        try:
            return list(await self.node.list_api_keys())
        except NotStarted as exc:
            raise RpcError(UNAVAILABLE, str(exc)) from None

    async def revoke_api_key(self, params: KeyIdParams) -> dict[str, bool]:
        try:
            revoked = await self.node.revoke_api_key(params.id)
        except NotStarted as exc:
            raise RpcError(UNAVAILABLE, str(exc)) from None
        if not revoked:
            raise RpcError(NOT_FOUND, f"no active key {params.id!r}")
        return {"revoked": True}

    async def update_config(self, params: UpdateConfigParams) -> dict[str, Any]:
        """Validate and write the change atomically; what is live applies before the
        answer, the rest is listed under restart_required. The answer's config is the one
        `gate serve` would start with now (the environment over the file)."""
        for key in params.set:
            if key.count(".") != 1:
                raise RpcError(INVALID_PARAMS, f"{key!r}: use section.key, e.g. server.bind")

        def edit(data: dict[str, Any]) -> None:
            for key, value in params.set.items():
                section, name = key.split(".")
                data.setdefault(section, {})[name] = value

        # As it will run after a restart (decoding it checks it whole, API keys beyond
        # loopback included); the node checks it as it runs from now.
        config = await self._edit_config(edit)
        return {
            "config": config_to_dict(config, mask_secrets=True),
            "restart_required": sorted(set(params.set) - LIVE_KEYS),
        }

    async def add_provider(self, params: AddProviderParams) -> dict[str, Any]:
        """Add an engine to gate.toml and to the running node at once."""
        entry = {k: v for k, v in msgspec.structs.asdict(params).items() if v not in ("", [], 0)}
        entry["name"], entry["kind"] = params.name, params.kind

        def edit(data: dict[str, Any]) -> None:
            engines = data.setdefault("providers", {}).setdefault("engines", [])
            engines.append(entry)

        def check(config: Config) -> None:
            if not any(engine.name == params.name for engine in config.providers.engines):
                raise _overridden("providers.engines")

        await self._edit_config(edit, check)
        described = self.node.provider(params.name)
        if described is None:  # pragma: no cover - the edit put it there
            raise RpcError(UNAVAILABLE, f"{params.name!r} is not running")
        return described

    async def generate_keypair(self, _: NoParams) -> dict[str, str]:
        """A new Ed25519 key (not installed): for a new node, or to import later."""
        identity = NodeIdentity.generate()
        return {
            "node_id": str(NodeId(identity.public_key_bytes)),
            "pem": identity.to_pem(None).decode(),
        }

    async def export_identity(self, params: ExportIdentityParams) -> dict[str, str]:
        pem = self.node.export_identity(params.passphrase)
        return {"node_id": str(self.node.node_id), "pem": pem.decode()}

    async def import_identity(self, params: ImportIdentityParams) -> dict[str, Any]:
        """Install a key as this node's identity; it takes effect at the next start."""
        try:
            node_id = await trio.to_thread.run_sync(
                partial(
                    self.node.import_identity,
                    params.pem.encode(),
                    source_passphrase=params.source_passphrase,
                    force=params.force,
                )
            )
        except IdentityError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        return {"node_id": str(node_id), "restart_required": True}

    async def node_restart(self, _: NoParams) -> dict[str, bool]:
        self.node.request_restart()
        return {"restarting": True}

    # --- helpers ---------------------------------------------------------------

    async def _edit_config(
        self, edit: Callable[[dict[str, Any]], None], check: Callable[[Config], None] | None = None
    ) -> Config:
        """`ControlledNode.edit_config`, its refusals as invalid params."""
        try:
            return await self.node.edit_config(edit, check)
        except (ConfigError, ValueError) as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None


def _validate(path: Path, text: str | None) -> dict[str, Any]:
    try:
        if text is None:
            validate_config_file(path)
        else:
            validate_config_text(text, "gate.toml")
    except ConfigError as exc:
        return {"valid": False, "error": str(exc)}
    return {"valid": True, "error": None}


_LOOPBACK_NAMES: Final = (b"127.0.0.1", b"localhost", b"[::1]")


@functools.cache
def _own_hosts(port: int) -> frozenset[bytes]:
    """Host header values naming this node (a browser leaves out the port 80)."""
    names = {name + b":" + str(port).encode() for name in _LOOPBACK_NAMES}
    return frozenset(names | (set(_LOOPBACK_NAMES) if port == 80 else set()))


@functools.cache
def _own_origins(port: int) -> frozenset[bytes]:
    return frozenset(b"http://" + host for host in _own_hosts(port))


def _overridden(key: str) -> ConfigError:
    """The file's value for `key` would not run: the environment of `gate serve` sets it."""
    return ConfigError(
        f"{key} is set in the environment of gate serve (GATE_...), which overrides "
        "gate.toml; change it there"
    )


def _node_id(text: str) -> NodeId:
    try:
        return NodeId.parse(text)
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


def _sse(kind: str, data: Any) -> bytes:
    return encode_event(msgspec.json.encode(data), kind)


def _error(ident: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


async def _no_content(send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
