"""Issuance and renewal of the node's certificate for each relay name, in trio.

For each name the relay gave (`<node-id>.<relay-domain>`), while a relay link to a relay
of that domain is up, `keep` makes sure a certificate from the CA is served: none yet,
or its renewal time reached, and it orders one. The DNS-01 challenge goes to the relay
(`ChallengeRelay.publish`, spec §6 dns_challenge); once the relay says it is published
the challenge is answered, the authorization polled as the CA's Retry-After says, the
order finalized with a CSR of a new key, the key and chain stored
(gate.services.acme.store) and installed in the node's certificate (hot: the next
handshake uses it); then `done` (activate_domain) tells the relay to remove the record,
on failure too.

The renewal time: two thirds of the lifetime, or a random time in the CA's renewal
window when it serves renewal information (ARI, RFC 9773). The window is read after
issuance and again, while the certificate is held, as the CA's Retry-After says (an hour
to a day; less for certificates shorter than a day, as test CAs issue): when the CA
moves the window (a mass revocation, say) and the renewal time is no longer in it, a new
one is drawn in the new window, and a window already past renews at once.

A failure is logged with the CA's problem document and retried after a jittered
exponential backoff (half to all of `_RETRY_MIN`, doubling up to `_RETRY_MAX`), kept per
name across relay reconnects, so nothing loops tightly (Let's Encrypt allows 5 failed
validations per name an hour). A CA that refuses for now (a rate limit, RFC 8555 §6.6)
and says when to come back is not asked again before then (up to `_REFUSED_MAX`).
Relays that share a domain share the name, hence one certificate and one issuance at a
time (a lock per name). The self-signed certificate serves meanwhile.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import trio

from gate.config import TlsConfig
from gate.services.acme.store import Issued, account_key, load_issued, new_key_pem, save_issued
from gate.services.http.tls import NodeCertificate

if TYPE_CHECKING:
    from gate.services.acme.session import AcmeSession, RenewalWindow

__all__ = ["AcmeIssuer", "ChallengeRelay", "IssuanceFailed"]

log = logging.getLogger("gate.acme")

_RETRY_MIN: Final = 10.0
_RETRY_MAX: Final = 3600.0
# A CA's "come back in N seconds" is honoured up to a day: a longer one (or a date far
# ahead, by mistake) would leave the name uncertified for too long to notice.
_REFUSED_MAX: Final = 86400.0
# How often the renewal window is read again: the CA's Retry-After within these bounds,
# this when it gives none (RFC 9773 §4.3.3's example). The lower bound is a twentieth of
# the lifetime when that is shorter (test CAs' certificates of seconds).
_ARI_POLL_MIN: Final = 3600.0
_ARI_POLL_MAX: Final = 86400.0
_ARI_POLL_DEFAULT: Final = 6 * 3600.0
# A wait for a far renewal time is cut into pieces: a suspended machine's clock jumps.
_RECHECK: Final = 3600.0
_AUTHORIZATION_TIMEOUT: Final = 120.0
_POLL_FIRST, _POLL_MAX = 0.1, 10.0
_FINALIZE_TIMEOUT: Final = 120.0


class IssuanceFailed(Exception):
    """An issuance step failed in a way that is not the CA's (e.g. the relay refused)."""


# How an attempt fails besides the ACME library's own failures (session.FAILURES: the
# CA's problem documents, answers it cannot parse, the network): the relay, the data dir.
# Each is retried after the backoff.
_FAILURES: Final = (IssuanceFailed, OSError, ValueError, KeyError)


class ChallengeRelay(Protocol):
    """The relay link an issuance publishes its challenge through."""

    async def publish(self, domain: str, txt_value: str) -> None:
        """dns_challenge: returns once the relay has published it; IssuanceFailed if not."""

    async def done(self, name: str) -> None:
        """activate_domain: the relay removes the name's challenge records."""


@dataclass
class NameState:
    """What the node knows of one name's certificate, for status and metrics."""

    name: str
    issued: Issued | None = None
    renew_at: datetime.datetime | None = None
    window: tuple[datetime.datetime, datetime.datetime] | None = None  # the CA's (ARI)
    window_at: datetime.datetime | None = None  # when to read it again; None: never
    issuing: bool = False
    failures: int = 0
    error: str = ""
    retry_at: datetime.datetime | None = None

    def describe(self) -> dict[str, str]:
        if self.issuing:
            state = "renewing" if self.issued else "issuing"
        elif self.failures:
            state = "retrying"
        else:
            state = "valid" if self.issued else "self-signed"
        next_at = self.retry_at if self.failures else self.renew_at
        return {
            "certificate": state,
            "certificate_expires": self.issued.not_after.isoformat() if self.issued else "",
            "certificate_next": next_at.isoformat(timespec="seconds") if next_at else "",
            "certificate_error": self.error,
        }


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AcmeIssuer:
    def __init__(
        self,
        config: TlsConfig,
        data_dir: Path,
        certificate: NodeCertificate,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.certificate = certificate
        self._eab_hmac_key = config.acme_eab_hmac_key or (
            env.get(config.acme_eab_hmac_key_env, "") if config.acme_eab_hmac_key_env else ""
        )
        if config.acme_eab_hmac_key_env and not self._eab_hmac_key:
            raise ValueError(f"acme_eab_hmac_key_env: ${config.acme_eab_hmac_key_env} is not set")
        if config.acme_ca_bundle and not Path(config.acme_ca_bundle).is_file():
            raise ValueError(f"acme_ca_bundle: no such file {config.acme_ca_bundle}")
        self.names: dict[str, NameState] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._rng = random.Random()

    def status(self, name: str) -> dict[str, str]:
        state = self.names.get(name.lower())
        return state.describe() if state else NameState(name).describe()

    def days_left(self) -> dict[str, float]:
        """Days until each issued certificate expires, by name (metrics)."""
        return {n: s.issued.days_left() for n, s in self.names.items() if s.issued is not None}

    def failures(self) -> dict[str, float]:
        """Failed attempts in a row, by name (metrics)."""
        return {n: float(s.failures) for n, s in self.names.items()}

    def _state(self, name: str) -> NameState:
        name = name.lower()
        if name not in self.names:
            self.names[name] = NameState(name)
            self._locks[name] = trio.Lock()
        return self.names[name]

    async def keep(self, name: str, relay: ChallengeRelay) -> None:
        """Keep `name` certified while this relay link lasts (cancelled when it ends)."""
        state = self._state(name)
        async with self._locks[state.name]:
            if state.issued is None:  # a certificate from an earlier run serves at once
                issued = await trio.to_thread.run_sync(load_issued, self.data_dir, state.name)
                if issued is not None and issued.not_after > _now():
                    await self._install(state, issued)
                    state.window_at = _now()  # the CA may have moved its window meanwhile
        while True:
            async with self._locks[state.name]:
                if self._due(state) <= _now():
                    await self._attempt(state, relay)
                elif state.window_at is not None and state.window_at <= _now():
                    await self._read_window(state)
                due = self._due(state)
                if state.window_at is not None:
                    due = min(due, state.window_at)
            wait = (due - _now()).total_seconds()
            await trio.sleep(min(max(wait, 0.0), _RECHECK))

    def _due(self, state: NameState) -> datetime.datetime:
        """When to try next: a failure's retry time, else the renewal time, else now."""
        if state.failures and state.retry_at is not None:
            return state.retry_at
        if state.issued is not None and state.renew_at is not None:
            return state.renew_at
        return _now()

    async def _attempt(self, state: NameState, relay: ChallengeRelay) -> None:
        state.issuing = True
        from gate.services.acme import session  # how the library fails; lazily, see _issue

        try:
            await self._issue(state, relay)
        except (*session.FAILURES, *_FAILURES) as exc:
            refused = exc.retry_after if isinstance(exc, session.CaRefused) else None
            self._failed(state, session.describe_error(exc), refused=refused)
        except Exception as exc:  # a surprise from the library must not end the relay link
            self._failed(state, f"{type(exc).__name__}: {exc}", unexpected=True)
        else:
            state.failures, state.error, state.retry_at = 0, "", None
        finally:
            state.issuing = False

    def _failed(
        self, state: NameState, error: str, unexpected: bool = False, refused: float | None = None
    ) -> None:
        """Count a failed attempt and set the next one: the backoff, or later when the CA
        said to wait longer (`refused`: its Retry-After, in seconds)."""
        state.failures += 1
        state.error = error
        delay = min(_RETRY_MAX, _RETRY_MIN * 2 ** min(state.failures - 1, 20))
        delay *= self._rng.uniform(0.5, 1.0)  # jittered: nodes do not retry in step
        if refused is not None:
            delay = max(delay, min(refused, _REFUSED_MAX))
        state.retry_at = _now() + datetime.timedelta(seconds=delay)
        log.warning(
            "certificate issuance failed",
            exc_info=unexpected,
            extra={
                "domain": state.name,
                "error": error,
                "attempt": state.failures,
                "retry_in_s": round(delay, 1),
            },
        )

    async def _issue(self, state: NameState, relay: ChallengeRelay) -> None:
        # The ACME library and its HTTP stack (requests, josepy, pyOpenSSL) cost a node
        # ~11 MB and ~0.17 s at start: imported at the first issuance, never by a node
        # with no relay or with certificate files of its own.
        from gate.services.acme.session import AcmeSession

        name = state.name
        run = trio.to_thread.run_sync
        key = await run(account_key, self.data_dir)
        session = AcmeSession(self.config, key, self._eab_hmac_key)
        await run(session.open, abandon_on_cancel=True)
        key_pem = new_key_pem()
        order, pending = await run(session.new_order, name, key_pem, abandon_on_cancel=True)
        log.info("certificate ordered", extra={"domain": name, "challenges": len(pending)})
        published = False
        try:
            for challenge in pending:
                await relay.publish(challenge.domain, challenge.txt_value)
                published = True
                await run(session.answer, challenge, abandon_on_cancel=True)
            wait: float | None = None
            for challenge in pending:
                with trio.fail_after(_AUTHORIZATION_TIMEOUT):
                    # The CA's Retry-After when it gives one; else soon, then less often.
                    pause = _POLL_FIRST
                    while True:
                        valid, wait = await run(session.poll, challenge, abandon_on_cancel=True)
                        if valid:
                            break
                        await trio.sleep(min(_POLL_MAX, pause if wait is None else wait))
                        pause = min(_POLL_MAX, pause * 2)
            order = await run(session.finalize, order, abandon_on_cancel=True)
            with trio.fail_after(_FINALIZE_TIMEOUT):
                pause, wait = _POLL_FIRST, None
                while not session.issued(order):
                    await trio.sleep(min(_POLL_MAX, pause if wait is None else wait))
                    pause = min(_POLL_MAX, pause * 2)
                    order, wait = await run(session.poll_order, order, abandon_on_cancel=True)
            chain = await run(session.download, order, abandon_on_cancel=True)
            issued = await run(save_issued, self.data_dir, name, key_pem, chain)
            await self._install(state, issued)
        except trio.TooSlowError:
            raise IssuanceFailed("the CA did not validate or issue in time") from None
        finally:
            if published:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await relay.done(name)
                    except IssuanceFailed as exc:  # the relay drops them after a while anyway
                        log.info("could not ask the relay to clean up", extra={"error": str(exc)})
        await self._read_window(state, session)

    async def _read_window(self, state: NameState, acme: AcmeSession | None = None) -> None:
        """Read the CA's renewal window for the certificate held (with `acme`'s session,
        else a new one that reads only the directory), move the renewal time into it,
        and set when to read it again. A failure leaves the renewal time as it was."""
        from gate.services.acme import session

        issued = state.issued
        if issued is None or issued.not_after <= _now():  # RFC 9773 §4.3: not once expired
            state.window_at = None
            return
        run = trio.to_thread.run_sync
        try:
            if acme is None:
                key = await run(account_key, self.data_dir)
                acme = session.AcmeSession(self.config, key, self._eab_hmac_key)
                await run(acme.open_directory, abandon_on_cancel=True)
            window = await run(acme.renewal_info, issued.chain_pem, abandon_on_cancel=True)
        except Exception as exc:  # the certificate is served whatever this says
            surprise = not isinstance(exc, (*session.FAILURES, *_FAILURES))
            (log.warning if surprise else log.info)(
                "could not read the renewal window",
                exc_info=surprise,
                extra={"domain": state.name, "error": session.describe_error(exc)},
            )
            refused = exc.retry_after if isinstance(exc, session.CaRefused) else None
            state.window_at = self._window_again(issued, refused)
            return
        if window is None:  # this CA serves no renewal information: two thirds it is
            state.window_at = None
            return
        self._take_window(state, issued, window)
        state.window_at = self._window_again(issued, window.retry_after)

    def _take_window(self, state: NameState, issued: Issued, window: RenewalWindow) -> None:
        """The renewal time stays while it is in the CA's window, else a new random one
        in it (RFC 9773 §4.2): a window moved earlier brings the renewal forward, one
        already past makes it due now."""
        span = (window.start, window.end)
        moved = state.window is not None and state.window != span
        state.window = span
        if state.renew_at is not None and window.start <= state.renew_at <= window.end:
            return
        seconds = (window.end - window.start).total_seconds()
        state.renew_at = window.start + datetime.timedelta(seconds=self._rng.uniform(0, seconds))
        log.info(
            "the CA moved its renewal window" if moved else "renewal time from the CA",
            extra={
                "domain": state.name,
                "window_start": window.start.isoformat(timespec="seconds"),
                "window_end": window.end.isoformat(timespec="seconds"),
                "renew_at": state.renew_at.isoformat(timespec="seconds"),
                "not_after": issued.not_after.isoformat(),
            },
        )

    @staticmethod
    def _window_again(issued: Issued, retry_after: float | None) -> datetime.datetime:
        """When to read the window again: the CA's Retry-After, bounded (see above)."""
        lifetime = (issued.not_after - issued.not_before).total_seconds()
        low = min(_ARI_POLL_MIN, lifetime / 20)
        wait = _ARI_POLL_DEFAULT if retry_after is None else retry_after
        return _now() + datetime.timedelta(seconds=min(max(wait, low), _ARI_POLL_MAX))

    async def _install(self, state: NameState, issued: Issued) -> None:
        """Serve `issued`; renew it at two thirds until the CA's window says otherwise."""
        await trio.to_thread.run_sync(self.certificate.install, state.name, issued.path)
        lifetime = issued.not_after - issued.not_before
        state.issued = issued
        state.window = None  # a new certificate's window is read anew
        state.renew_at = issued.not_before + lifetime * 2 / 3
        log.info(
            "certificate installed",
            extra={
                "domain": state.name,
                "not_after": issued.not_after.isoformat(),
                "renew_at": state.renew_at.isoformat(timespec="seconds"),
            },
        )
