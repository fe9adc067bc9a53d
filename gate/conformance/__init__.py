"""The conformance suite: `gate conformance TARGET` checks a running node or relay, of
any make, against spec/protocol.md over iroh, case by case.

- registry: what a case is (a stable id `node/3.2/1`, a level, the spec's words it
  checks); cases/: the cases, one module per part of the spec; catalog: all of them,
  and the ones a run selects.
- probe, wire, node_session, http_client, relay_session, tls_hello: how a case talks to
  the target (and writes down the evidence).
- runner: runs cases against a target; report: text, JSON, JUnit XML, Markdown.
- kit: the same protocol rules as functions a third party's pytest suite calls with a
  factory for its own sans-IO implementation, without a network.
- uncovered: the MUSTs of the spec no live case checks, each with the reason.
"""

from gate.conformance.catalog import all_cases, select
from gate.conformance.probe import Target
from gate.conformance.registry import Case, Level, Outcome, Result, Role
from gate.conformance.runner import run_cases

__all__ = [
    "Case",
    "Level",
    "Outcome",
    "Result",
    "Role",
    "Target",
    "all_cases",
    "run_cases",
    "select",
]
