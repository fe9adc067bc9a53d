"""The black-box runner: binds the runner's iroh endpoints (a stranger's throwaway key,
and the identity the target trusts if given) and runs each case against the target,
each with fresh connections and a time bound, turning what happened into a Result."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import trio

from gate.conformance.probe import Probe, Target
from gate.conformance.registry import Case, CaseFailed, CaseSkipped, Outcome, Result
from gate.identity import NodeIdentity
from gate.services.transport.quic import Endpoint, TransportError, bind_endpoint

__all__ = ["run_cases"]


async def run_cases(
    target: Target,
    cases: Sequence[Case],
    *,
    identity: NodeIdentity | None = None,
    host: str = "0.0.0.0",
) -> list[Result]:
    """Run `cases` in order; never raises for the target's misbehaviour (BindError when
    this machine cannot bind the runner's own endpoint)."""
    async with contextlib.AsyncExitStack() as endpoints:
        stranger = await _bound(endpoints, NodeIdentity.generate(), host)
        friend = await _bound(endpoints, identity, host) if identity is not None else None
        return [await run_case(case, target, stranger, friend) for case in cases]


async def run_case(
    case: Case, target: Target, stranger: Endpoint, friend: Endpoint | None
) -> Result:
    probe = Probe(target, stranger, friend)
    started = time.monotonic()

    def result(outcome: Outcome, detail: str) -> Result:
        return Result(case, outcome, detail, list(probe.evidence), time.monotonic() - started)

    if case.trusted and friend is None:
        return result(Outcome.SKIP, "needs --identity: a key the target trusts")
    try:
        with trio.fail_after(case.timeout):
            detail = await case.body(probe)
    except CaseFailed as exc:
        return result(Outcome.FAIL, str(exc))
    except CaseSkipped as exc:
        return result(Outcome.SKIP, str(exc))
    except trio.TooSlowError:
        return result(Outcome.FAIL, f"no answer in time (the case's bound is {case.timeout:g} s)")
    except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        return result(Outcome.FAIL, f"{type(exc).__name__}: {exc}")
    finally:
        probe.close()
    return result(Outcome.PASS, detail)


async def _bound(stack: contextlib.AsyncExitStack, identity: NodeIdentity, host: str) -> Endpoint:
    """An endpoint for `identity`, closed (shielded) when `stack` unwinds."""
    endpoint = await bind_endpoint(identity.secret_key_bytes, host=host)
    stack.push_async_callback(_close_endpoint, endpoint)
    return endpoint


async def _close_endpoint(endpoint: Endpoint) -> None:
    with trio.CancelScope(shield=True):
        await endpoint.aclose()
