"""`gate conformance NODE`: the live conformance suite against a running node."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from gate.cli._common import EXIT_BAD_INPUT, EXIT_FAILURE, emit_json, fail, json_option, passphrase


@click.command("conformance")
@click.argument("node")
@click.option(
    "--identity",
    "identity_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="PEM key of a node the target trusts (from `gate identity export`): also run "
    "the trusted checks. GATE_PASSPHRASE decrypts it.",
)
@click.option(
    "--bind-host",
    default="0.0.0.0",
    show_default=True,
    help="Where the suite's own iroh endpoint binds (127.0.0.1 for a node on this machine).",
)
@json_option
def conformance(node: str, identity_path: Path | None, bind_host: str, as_json: bool) -> None:
    """Check a running node's wire behaviour (spec/protocol.md) over iroh.

    NODE is NODE_ID@HOST:PORT, the node's P2P address (`gate status` prints it).
    Exit 0 when every check that ran passed, 1 when one failed.
    """
    import trio

    from gate.conformance import run_suite
    from gate.errors import GateError, IdentityError, describe
    from gate.identity import NodeIdentity
    from gate.services.p2p.service import parse_peer_spec

    try:
        node_id, addresses = parse_peer_spec(node)
    except ValueError as exc:
        fail(f"{node!r}: {exc}", EXIT_BAD_INPUT)
    if not addresses:
        fail("give the node's address too: NODE_ID@HOST:PORT", EXIT_BAD_INPUT)
    identity = None
    if identity_path is not None:
        try:
            identity = NodeIdentity.from_pem(identity_path.read_bytes(), passphrase())
        except (IdentityError, ValueError, OSError) as exc:
            fail(f"{identity_path}: {exc}", EXIT_BAD_INPUT)
    try:
        results = trio.run(lambda: run_suite(node_id, addresses, identity=identity, host=bind_host))
    except GateError as exc:  # e.g. the suite's own endpoint cannot bind --bind-host
        fail(describe(exc))
    if as_json:
        emit_json([dataclasses.asdict(r) for r in results])
    else:
        for r in results:
            mark = {True: "PASS", False: "FAIL", None: "SKIP"}[r.passed]
            click.echo(f"{mark}  {r.name} ({r.requirement}): {r.detail}")
        ran = [r for r in results if r.passed is not None]
        passed = sum(1 for r in ran if r.passed)
        click.echo(f"{passed} of {len(ran)} checks passed, {len(results) - len(ran)} skipped")
    if any(r.passed is False for r in results):
        raise SystemExit(EXIT_FAILURE)
