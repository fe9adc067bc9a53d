"""One ACME account at one CA, step by step, with certbot's `acme` library (RFC 8555:
JWS, nonces and a badNonce retry, the order flow). Two things it leaves out are done
here: a refusal's Retry-After (a rate limit, RFC 8555 §6.6: the library raises the
problem document and drops the header; `CaRefused` keeps it), and the renewal window
itself (ARI, RFC 9773: the library's `renewal_time` gives one random time in it and a
naive local time to ask again; `renewal_info` gives the window and the CA's
Retry-After, so that the issuer can tell when the CA moved it). Every method blocks on HTTP
(each request bounded by `_HTTP_TIMEOUT`): the issuer runs each in a worker thread, so
cancelling the issuer cancels between steps and abandons a step in flight.

Why this library: it is certbot's, kept by the Let's Encrypt people and used against
their CA every day; it does the JWS and nonce handling that is easy to get subtly wrong.
It is synchronous, which costs a thread per step here and nothing else."""

from __future__ import annotations

import datetime
import email.utils
import logging
from dataclasses import dataclass
from typing import Any, Final

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import Error as JoseError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from gate import __version__
from gate.config import TlsConfig

__all__ = [
    "FAILURES",
    "AcmeError",
    "AcmeSession",
    "CaRefused",
    "Challenge",
    "RenewalWindow",
    "describe_error",
]

log = logging.getLogger("gate.acme")

_HTTP_TIMEOUT: Final = 30
_BAD_NONCE_ROUNDS: Final = 4
AcmeError = errors.Error  # every failure the library raises
# How the library fails: the CA's answers (problem documents, or ones it cannot parse)
# and the network.
FAILURES: Final = (AcmeError, JoseError, requests.RequestException)


# The statuses a CA says "not now" with: a rate limit (429, RFC 8555 §6.6) or overload.
_COME_BACK_LATER: Final = (429, 503)


class CaRefused(errors.Error):
    """The CA refused a request for now (a rate limit, or overloaded) and said, in its
    Retry-After, how long to wait before asking again."""

    def __init__(self, problem: messages.Error | None, retry_after: float) -> None:
        super().__init__(problem, retry_after)
        self.problem = problem
        self.retry_after = retry_after  # seconds from when the answer came


def retry_after_s(response: requests.Response) -> float | None:
    """A response's Retry-After in seconds from now (RFC 9110 §10.2.3: seconds, or an
    HTTP date), or None when it has none or none that parses."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


class _Network(client.ClientNetwork):
    """The library's network, with a request the CA refused for a stale nonce (badNonce,
    RFC 8555 §6.5) sent again a few times rather than once (each time with the fresh
    nonce the refusal carried): CAs reject nonces at will. A refusal for now (429 or
    503, or a `rateLimited` problem) that says when to come back is `CaRefused`."""

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type)
        except (messages.Error, errors.ClientError) as error:
            wait = retry_after_s(response)
            problem = error if isinstance(error, messages.Error) else None
            rate_limited = problem is not None and problem.code == "rateLimited"
            if wait is None or not (response.status_code in _COME_BACK_LATER or rate_limited):
                raise
            raise CaRefused(problem, wait) from error

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(_BAD_NONCE_ROUNDS - 1):
            try:
                return super().post(*args, **kwargs)  # which itself retries once
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
                log.debug("the CA refused a nonce again; retrying")
        return super().post(*args, **kwargs)


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window for a certificate (RFC 9773 §4.2), and how long
    it asks to wait before asking again (its Retry-After; None when it gave none)."""

    start: datetime.datetime
    end: datetime.datetime
    retry_after: float | None


@dataclass(frozen=True)
class Challenge:
    """One DNS-01 challenge: publish `txt_value` at `domain`, then answer it."""

    domain: str  # _acme-challenge.<name>
    txt_value: str  # the key authorization's digest, base64url (43 characters)
    body: messages.ChallengeBody
    authorization: messages.AuthorizationResource


class AcmeSession:
    """The CA's directory and this node's account there (made or found on `open`)."""

    def __init__(
        self, config: TlsConfig, account_key: ec.EllipticCurvePrivateKey, eab_hmac_key: str
    ) -> None:
        self.config = config
        self._jwk = JWKEC(key=account_key)
        self._eab_hmac_key = eab_hmac_key
        self._net = _Network(
            self._jwk,
            alg=ES256,
            # requests takes a CA bundle's path where the library says bool.
            verify_ssl=config.acme_ca_bundle or True,  # type: ignore[arg-type]
            user_agent=f"gate/{__version__} acme-python",
            timeout=_HTTP_TIMEOUT,
        )
        self._client: client.ClientV2 | None = None

    @property
    def acme(self) -> client.ClientV2:
        if self._client is None:
            raise RuntimeError("open() first")
        return self._client

    def open_directory(self) -> None:
        """Fetch the directory: enough for what needs no account (renewal information)."""
        directory = client.ClientV2.get_directory(self.config.acme_directory, self._net)
        self._client = client.ClientV2(directory, self._net)

    def open(self) -> None:
        """Fetch the directory and register the account, or find it (same key)."""
        self.open_directory()
        assert self._client is not None
        directory = self._client.directory
        eab = None
        if self.config.acme_eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self._jwk.public_key(),
                kid=self.config.acme_eab_kid,
                hmac_key=self._eab_hmac_key,
                directory=directory,
            )
        fields: dict[str, Any] = {"terms_of_service_agreed": True}
        if self.config.acme_email:
            fields["email"] = self.config.acme_email
        if eab is not None:
            fields["external_account_binding"] = eab
        try:
            self.acme.new_account(messages.NewRegistration.from_data(**fields))
        except errors.ConflictError as exc:  # this key has an account already: use it
            self._net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )

    def new_order(
        self, name: str, key_pem: bytes
    ) -> tuple[messages.OrderResource, list[Challenge]]:
        """An order for `name`, and the DNS-01 challenges of its pending authorizations
        (none when the CA reuses valid ones)."""
        order = self.acme.new_order(crypto_util.make_csr(key_pem, [name]))
        pending = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            dns01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01)]
            if not dns01:
                raise errors.Error(f"the CA offers no dns-01 challenge for {name}")
            chall = dns01[0].chall
            assert isinstance(chall, challenges.DNS01)
            identifier = authz.body.identifier.value
            pending.append(
                Challenge(
                    domain=chall.validation_domain_name(identifier),
                    txt_value=chall.validation(self._jwk),
                    body=dns01[0],
                    authorization=authz,
                )
            )
        return order, pending

    def answer(self, challenge: Challenge) -> None:
        """Tell the CA the TXT record is there: it validates now."""
        chall = challenge.body.chall
        assert isinstance(chall, challenges.DNS01)
        self.acme.answer_challenge(challenge.body, chall.response(self._jwk))

    def poll(self, challenge: Challenge) -> tuple[bool, float | None]:
        """Whether the authorization is valid, and how long the CA asks to wait before
        asking again (its Retry-After; None when it says nothing). ValidationError when
        it is invalid."""
        authz, response = self.acme.poll(challenge.authorization)
        if authz.body.status == messages.STATUS_INVALID:
            raise errors.ValidationError([authz])
        return authz.body.status == messages.STATUS_VALID, retry_after_s(response)

    def finalize(self, order: messages.OrderResource) -> messages.OrderResource:
        """Send the CSR (again after the CA said the order was not ready yet)."""
        try:
            return self.acme.begin_finalization(order)
        except messages.Error as error:
            if error.code != "orderNotReady":
                raise
            return order

    def poll_order(
        self, order: messages.OrderResource
    ) -> tuple[messages.OrderResource, float | None]:
        """The order as the CA has it now, finalized again if it became ready, and its
        Retry-After (None: none given). IssuanceError when the CA gave it up. (The
        library's own poll waits a whole second before its first look.)"""
        response = self._post_as_get(order.uri)
        body = messages.Order.from_json(response.json())
        if body.status == messages.STATUS_INVALID:
            if body.error is not None:
                raise errors.IssuanceError(body.error)
            raise errors.Error("the CA gave up the order and said nothing why")
        order = order.update(body=body)
        if body.status == messages.STATUS_READY:
            order = self.finalize(order)
        return order, retry_after_s(response)

    @staticmethod
    def issued(order: messages.OrderResource) -> bool:
        return order.body.status == messages.STATUS_VALID and order.body.certificate is not None

    def download(self, order: messages.OrderResource) -> bytes:
        """The issued certificate's chain (PEM, the leaf first)."""
        if order.body.certificate is None:
            raise errors.Error("the order has no certificate yet")
        return self._post_as_get(order.body.certificate).text.encode()

    def _post_as_get(self, url: str) -> requests.Response:
        # RFC 8555 §6.3: an authenticated GET is a POST with an empty payload.
        return self._net.post(url, None, new_nonce_url=self.acme.directory["newNonce"])

    def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        """The CA's renewal window for the chain's leaf (ARI, RFC 9773), or None when the
        CA serves none (no `renewalInfo` in its directory). A failure to fetch or read it
        raises (one of FAILURES, or ValueError)."""
        try:
            url = str(self.acme.directory["renewalInfo"])
        except KeyError:
            return None
        leaf = x509.load_pem_x509_certificate(chain_pem)
        # The certificate's ARI identifier (§4.1): the library's own function.
        response = self._net.get(
            f"{url.rstrip('/')}/{client._renewal_info_path_component(leaf)}",
            content_type="application/json",
        )
        window = messages.RenewalInfo.from_json(response.json()).suggested_window
        start, end = (_utc(window.start), _utc(window.end))
        if start is None or end is None or end < start:
            raise ValueError(f"the CA's renewal window is not one: {start} to {end}")
        return RenewalWindow(start, end, retry_after_s(response))


def _utc(when: datetime.datetime | None) -> datetime.datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=datetime.UTC)
    return when


def describe_error(exc: BaseException) -> str:
    """A failure in a line, with the CA's problem document (type, detail, subproblems,
    and a failed challenge's own problem) when there is one."""
    if isinstance(exc, errors.ValidationError):
        problems = [
            _problem(chall.error)
            for authz in exc.failed_authzrs
            for chall in authz.body.challenges
            if chall.error is not None
        ]
        return "validation failed: " + ("; ".join(problems) or "no detail from the CA")
    if isinstance(exc, errors.IssuanceError):
        return "issuance failed: " + _problem(exc.error)
    if isinstance(exc, CaRefused):
        said = _problem(exc.problem) if exc.problem is not None else "refused for now"
        return f"{said} (Retry-After {exc.retry_after:.0f} s)"
    if isinstance(exc, messages.Error):
        return _problem(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _problem(error: messages.Error) -> str:
    text = f"{error.typ}: {error.detail or ''}".rstrip(": ")
    for sub in error.subproblems or ():
        text += f" [{sub.typ}: {sub.detail}]"
    return text
