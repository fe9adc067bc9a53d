"""`gate conformance TARGET`: the conformance suite against a running node or relay."""

from __future__ import annotations

from pathlib import Path

import click

from gate.cli._common import EXIT_BAD_INPUT, EXIT_FAILURE, fail, passphrase


@click.command("conformance")
@click.argument("target", required=False)
@click.option(
    "--role",
    type=click.Choice(["node", "relay"]),
    default="node",
    show_default=True,
    help="What TARGET is: a node, or a relay (`gate relay serve`).",
)
@click.option(
    "--identity",
    "identity_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Ed25519 key the target trusts (PEM from `gate identity export`, 32 raw bytes, "
    "or 64 hex digits): also run the trusted cases. GATE_PASSPHRASE decrypts a PEM.",
)
@click.option("--strict", is_flag=True, help="Also run the SHOULD cases, and require them.")
@click.option(
    "--cases",
    "only",
    metavar="LIST",
    help="Only these sections or cases, comma-separated: 3.2,5.4/2.",
)
@click.option(
    "--front",
    metavar="HOST:PORT",
    help="A relay's TLS port, for the TlsProxy cases (§7.4).",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a JUnit XML report to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--list", "list_only", is_flag=True, help="Print the cases without running them.")
@click.option("--markdown", is_flag=True, help="With --list: as the Markdown table of the spec.")
@click.option(
    "--bind-host",
    default="0.0.0.0",
    show_default=True,
    help="Where the runner's own iroh endpoint binds (127.0.0.1 for a target on this machine).",
)
def conformance(
    target: str | None,
    role: str,
    identity_path: Path | None,
    strict: bool,
    only: str | None,
    front: str | None,
    junit_path: Path | None,
    as_json: bool,
    list_only: bool,
    markdown: bool,
    bind_host: str,
) -> None:
    """Check a running node's or relay's wire behaviour against spec/protocol.md.

    TARGET is NODE_ID@HOST:PORT, its P2P address (`gate status` or `gate relay serve`
    print it). Exit 0 when every case that ran passed, 1 when one failed.
    """
    import trio

    from gate.conformance import Role, Target, run_cases, select
    from gate.conformance.report import as_json as json_report
    from gate.conformance.report import (
        as_junit,
        as_markdown,
        as_text,
        listing,
        listing_json,
        passed,
    )
    from gate.errors import GateError, describe
    from gate.peers_config import parse_peer_spec

    try:
        cases = select(Role(role), strict=strict, only=only)
    except ValueError as exc:
        fail(f"--cases: {exc}", EXIT_BAD_INPUT)
    if markdown and (as_json or not list_only):
        fail("--markdown goes with --list alone", EXIT_BAD_INPUT)
    if list_only:
        if as_json:
            click.echo(listing_json(cases))
        else:
            click.echo(as_markdown(cases) if markdown else listing(cases), nl=not markdown)
        return
    if target is None:
        fail("give the target: NODE_ID@HOST:PORT (or --list)", EXIT_BAD_INPUT)
    try:
        node_id, addresses = parse_peer_spec(target)
    except ValueError as exc:
        fail(f"{target!r}: {exc}", EXIT_BAD_INPUT)
    if not addresses:
        fail("give the target's address too: NODE_ID@HOST:PORT", EXIT_BAD_INPUT)
    front_address = None
    if front is not None:
        host, _, port = front.rpartition(":")
        if not host or not port.isdigit():
            fail(f"--front {front!r}: expected HOST:PORT", EXIT_BAD_INPUT)
        front_address = (host.strip("[]"), int(port))
    identity = _identity(identity_path) if identity_path is not None else None
    try:
        results = trio.run(
            lambda: run_cases(
                Target(node_id, addresses, front_address), cases, identity=identity, host=bind_host
            )
        )
    except GateError as exc:  # e.g. the runner's own endpoint cannot bind --bind-host
        fail(describe(exc))
    if junit_path is not None:
        try:
            junit_path.write_text(as_junit(results, f"gate conformance ({role})"))
        except OSError as exc:
            fail(f"--junit {junit_path}: {exc}")
    click.echo(json_report(results) if as_json else as_text(results))
    if not passed(results):
        raise SystemExit(EXIT_FAILURE)


def _identity(path: Path):  # type: ignore[no-untyped-def]
    """A PEM key, or the 32-byte secret raw or as 64 hex digits."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from gate.errors import IdentityError
    from gate.identity import NodeIdentity

    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            return NodeIdentity.from_pem(data, passphrase())
        text = data.strip()
        raw = bytes.fromhex(text.decode()) if len(text) == 64 else data
        if len(raw) != 32:
            raise ValueError("not a PEM key, 32 raw bytes or 64 hex digits")
        return NodeIdentity(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
    except (IdentityError, ValueError, UnicodeDecodeError, OSError) as exc:
        fail(f"{path}: {exc}", EXIT_BAD_INPUT)
