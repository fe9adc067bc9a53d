"""`python -m spec.reference`: run the reference node, or ask a node one request.

    python -m spec.reference serve --key FILE --trust NODE_ID (--upstream URL | --canned TEXT)
    python -m spec.reference ask --key FILE --to NODE_ID@HOST:PORT [-X METHOD] [--data BODY] TARGET
    python -m spec.reference id --key FILE

See spec/reference/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx

from . import wire
from .node import Gone, Node, log


def load_key(path: Path) -> bytes:
    """The node's 32-byte Ed25519 secret key, as 64 hex digits; made on first use."""
    if not path.exists():
        path.write_text(os.urandom(32).hex() + "\n")
        path.chmod(0o600)
    return bytes.fromhex(path.read_text().strip())


async def serve(args: argparse.Namespace) -> None:
    node = Node(load_key(args.key), set(args.trust), args.upstream, args.canned, args.model)
    if args.upstream and not node.models:  # advertise what the upstream serves (§5.3)
        async with httpx.AsyncClient(timeout=10) as client:
            listing = (await client.get(f"{args.upstream}/v1/models")).json()
        node.models = [model["id"] for model in listing.get("data", [])]
    addresses = await node.bind(args.host, args.port)
    log("node", node.node_id)
    log("address", f"{node.node_id}@{','.join(addresses)}")
    await node.serve()


async def ask(args: argparse.Namespace) -> int:
    """One http_proxy request (§7) to a node, after the handshake (§5.4). Prints
    `status N`, then the body as it arrives; exit 1 on a stream error."""
    node = Node(load_key(args.key), set())
    await node.bind(args.host, 0)
    node_id, _, addresses = args.to.partition("@")
    session = await node.dial(node_id, [a for a in addresses.split(",") if a])
    headers = [tuple(h.split(":", 1)) for h in args.header]
    headers = [(k.strip(), v.strip()) for k, v in headers]
    body = args.data.encode() if args.data else b""
    if body and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("content-type", "application/json"))
    exchange = await session.request(args.method, args.target, headers, body)
    chunks = 0
    try:
        async for event, message in exchange.response():
            if event == "response_head":
                log("status", message["status"])
            elif event == "body":
                sys.stdout.buffer.write(message["data"])
                sys.stdout.flush()
                chunks += 1
                if args.cancel_after and chunks >= args.cancel_after:  # §7.3, by frame
                    await exchange.fail(wire.CANCELLED, "cancelled by the requester")
                    log("\ncancelled")
                    return 0
        if exchange.table.response != "done":
            raise wire.WireError(wire.TRUNCATED, "the response ended before its end")
        await exchange.stream.finish()  # our half is done: the exchange is complete
        return 0
    except (wire.WireError, Gone) as exc:
        print(f"\nerror {getattr(exc, 'code', '')} {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await asyncio.sleep(0.2)  # let the last frames go before the connection closes
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m spec.reference")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve node_control and http_proxy streams")
    run.add_argument("--key", type=Path, required=True, help="secret key file (hex)")
    run.add_argument("--trust", action="append", default=[], help="a trusted NodeId")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--upstream", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080")
    source.add_argument("--canned", help="answer every request with this text")
    source.add_argument("--echo", action="store_true", help="answer with the request's head")
    run.add_argument("--model", action="append", default=[], help="a model to advertise")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=0)
    one = commands.add_parser("ask", help="send one http_proxy request to a node")
    one.add_argument("--key", type=Path, required=True)
    one.add_argument("--to", required=True, help="NODE_ID@HOST:PORT[,HOST:PORT]")
    one.add_argument("-X", "--method", default="GET")
    one.add_argument("-H", "--header", action="append", default=[], help="'name: value'")
    one.add_argument("--data", help="the request body")
    one.add_argument("--cancel-after", type=int, default=0, help="cancel after N body frames")
    one.add_argument("--host", default="127.0.0.1")
    one.add_argument("target", help="path and query, e.g. /v1/models")
    show = commands.add_parser("id", help="print the node id of a key file")
    show.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "id":
        print(Node(load_key(args.key), set()).node_id)
    elif args.command == "serve":
        asyncio.run(serve(args))
    else:
        sys.exit(asyncio.run(ask(args)))


if __name__ == "__main__":
    main()
