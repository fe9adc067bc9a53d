"""The `gate` command line.

Every command that acts on the node goes through the running daemon's JSON-RPC
(gate.rpc_client); the few that can do their work without one (adding or removing a
peer, API keys) edit gate.toml or gate.db directly when no daemon answers, and say so.
Output is for people by default; `--json` prints JSON for scripts on stdout, and
remarks, spinners and errors go to stderr.

Exit codes: 0 success; 1 the operation failed (a service crashed, an engine is down, a
file could not be written); 2 bad input (invalid config, bad arguments, a peer, key or
engine that does not exist); 3 the command needs the running daemon and none answers;
4 the daemon that answers is another node's (not the one of this config and data dir:
the command did nothing); 130 interrupted (Ctrl-C). Errors are one readable line on
stderr, never a traceback; GATE_LOG=debug adds the traceback where the daemon logs one.

One module per command group; this one only assembles them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from gate import __version__
from gate.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NO_DAEMON,
    EXIT_WRONG_NODE,
    fail,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NO_DAEMON",
    "EXIT_WRONG_NODE",
    "fail",
    "main",
]


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        # click would print "Aborted!" and exit 1; Ctrl-C gets the shell's 130 instead.
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort):
            click.echo("\ngate: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="gate")
def main() -> None:
    """Gate: secure access to the AI compute you own or trust."""


def _register() -> None:
    from gate.cli import (
        config,
        conformance,
        daemon,
        identity,
        keys,
        peers,
        providers,
        relay,
        wizard,
    )

    main.add_command(daemon.serve)
    main.add_command(daemon.serve_alias, name="daemon")
    main.add_command(daemon.status)
    main.add_command(daemon.stop)
    main.add_command(daemon.logs)
    main.add_command(wizard.setup)
    main.add_command(config.config_group)
    main.add_command(identity.identity_group)
    main.add_command(peers.peers_group)
    main.add_command(keys.keys_group)
    main.add_command(providers.providers_group)
    main.add_command(conformance.conformance)
    main.add_command(relay.relay_group)


_register()
